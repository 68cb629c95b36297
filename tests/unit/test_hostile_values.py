"""Every value the FlagSchedule schema admits is one the models read and the time logic handles.

Hypothesis draws scheduledAt strings in the shape and range the CRD allows (any offset up to 23:59,
up to nine fractional digits, 2000 <= t < 2200), every startingDeadlineSeconds and retry value the
schema bounds admit, and any moment in the same range as ``now``: parsing never fails, and no time
rule raises (the overflow the old unbounded deadline caused is the regression this guards).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from flag_scheduler.config import Settings
from flag_scheduler.models import EARLIEST, LATEST, MAX_DEADLINE_SECONDS, FlagSchedule, Phase
from flag_scheduler.timing import action, backoff_seconds, deadline_missed, due_at, next_retry_at

offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
instants = st.datetimes(min_value=datetime(2000, 1, 2), max_value=datetime(2199, 12, 30), timezones=st.just(UTC))


@st.composite
def scheduled_at(draw: st.DrawFn) -> str:
    """A scheduledAt string the CRD admits: the pattern's shape, an offset, the range."""
    moment = draw(instants).astimezone(draw(offsets))
    digits = draw(st.integers(0, 9))
    fraction = "" if digits == 0 else "." + f"{moment.microsecond:06d}{draw(st.integers(0, 999)):03d}"[:digits]
    zone = moment.strftime("%z")
    zone = "Z" if zone == "+0000" and draw(st.booleans()) else f"{zone[:3]}:{zone[3:]}"
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + fraction + zone


retry = st.fixed_dictionaries({}, optional={
    "maxRetries": st.integers(0, 100), "backoffSeconds": st.integers(1, 86400),
    "maxBackoffSeconds": st.integers(1, 86400)})


@given(scheduled_at(), st.none() | st.integers(0, MAX_DEADLINE_SECONDS), retry, instants,
       st.integers(0, 100), st.floats(0, 1, exclude_max=True))
def test_admitted_values_parse_and_every_time_rule_handles_them(
    at: str, deadline: int | None, policy: dict, now: datetime, retries: int, jitter: float
) -> None:
    spec = {"flagRef": {"name": "f"}, "scheduledAt": at, "updates": {"enabled": True}}
    if deadline is not None:
        spec["startingDeadlineSeconds"] = deadline
    if policy:
        spec["retry"] = policy
    schedule = FlagSchedule.from_body({"metadata": {"namespace": "ns", "name": "s", "uid": "u"}, "spec": spec,
                                       "status": {"phase": Phase.PENDING.value, "retryCount": retries}})
    assert EARLIEST <= schedule.spec.scheduled_at < LATEST
    action(schedule, now)
    deadline_missed(schedule, now)
    due_at(schedule)
    limits = Settings(identity="me").retry_limits(schedule.spec.retry)
    assert 0 < backoff_seconds(retries + 1, limits, jitter) <= max(limits.max_backoff_seconds, 86400)
    next_retry_at(now, retries + 1, limits, jitter)
