"""The pure time rules in ``flag_scheduler.timing``: table-driven cases, then hypothesis properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from flag_scheduler.models import FlagSchedule, Phase
from flag_scheduler.timing import (
    JITTER,
    Action,
    RetryLimits,
    action,
    backoff_seconds,
    deadline_missed,
    due_at,
    head_of_line,
    next_retry_at,
    order_key,
    retries_exhausted,
)

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
LIMITS = RetryLimits(max_retries=3, backoff_seconds=30, max_backoff_seconds=3600)


def sec(n: float) -> timedelta:
    return timedelta(seconds=n)


def make_schedule(
    name: str = "s",
    at: datetime = T0,
    phase: Phase = Phase.PENDING,
    retry_count: int = 0,
    next_retry: datetime | None = None,
    cancelled: bool = False,
    deadline: int | None = None,
    generation: int = 1,
) -> FlagSchedule:
    """A FlagSchedule parsed from an API-shaped body, as the operator sees it."""
    spec: dict[str, Any] = {
        "flagRef": {"name": "checkout"},
        "scheduledAt": at.isoformat(),
        "updates": {"enabled": True},
        "cancelled": cancelled,
    }
    if deadline is not None:
        spec["startingDeadlineSeconds"] = deadline
    status: dict[str, Any] = {"phase": phase.value, "retryCount": retry_count, "observedGeneration": 1}
    if next_retry is not None:
        status["nextRetryAt"] = next_retry.isoformat()
    body = {"metadata": {"namespace": "default", "name": name, "generation": generation}, "spec": spec,
            "status": status}
    return FlagSchedule.from_body(body)


# --- due_at ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        pytest.param(make_schedule(), T0, id="pending-is-due-at-scheduledAt"),
        pytest.param(
            make_schedule(phase=Phase.PENDING, next_retry=T0 + sec(60)), T0, id="pending-ignores-stale-nextRetryAt"
        ),
        pytest.param(
            make_schedule(phase=Phase.RETRYING, retry_count=1, next_retry=T0 + sec(60)),
            T0 + sec(60),
            id="retrying-is-due-at-nextRetryAt",
        ),
        pytest.param(
            make_schedule(phase=Phase.RETRYING, retry_count=1, next_retry=T0 - sec(60)),
            T0 - sec(60),
            id="retrying-nextRetryAt-earlier-than-scheduledAt-wins",
        ),
        pytest.param(
            make_schedule(at=T0 + sec(7 * 86400), phase=Phase.RETRYING, retry_count=1, next_retry=T0 + sec(60),
                          generation=2),
            T0 + sec(7 * 86400),
            id="retrying-moved-a-week-ahead-is-due-at-its-new-scheduledAt",
        ),
        pytest.param(
            make_schedule(phase=Phase.RETRYING, retry_count=1), T0, id="retrying-without-nextRetryAt-falls-back"
        ),
    ],
)
def test_due_at(schedule: FlagSchedule, expected: datetime) -> None:
    assert due_at(schedule) == expected


# --- action ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "now", "expected"),
    [
        pytest.param(make_schedule(), T0 - sec(1), Action.WAIT, id="pending-before-due-waits"),
        pytest.param(make_schedule(), T0, Action.APPLY, id="pending-exactly-due-applies"),
        pytest.param(make_schedule(), T0 + sec(1), Action.APPLY, id="pending-after-due-applies"),
        pytest.param(make_schedule(), T0 + timedelta(days=365), Action.APPLY, id="no-deadline-never-misses"),
        pytest.param(make_schedule(deadline=60), T0 + sec(60), Action.APPLY, id="deadline-boundary-still-applies"),
        pytest.param(make_schedule(deadline=60), T0 + sec(60.001), Action.MISS, id="just-past-deadline-misses"),
        pytest.param(make_schedule(deadline=0), T0, Action.APPLY, id="zero-deadline-exactly-on-time-applies"),
        pytest.param(make_schedule(deadline=0), T0 + sec(1), Action.MISS, id="zero-deadline-late-misses"),
        pytest.param(make_schedule(deadline=0), T0 - sec(1), Action.WAIT, id="deadline-irrelevant-before-due"),
        pytest.param(
            make_schedule(phase=Phase.RETRYING, retry_count=1, next_retry=T0 + sec(30)),
            T0 + sec(29),
            Action.WAIT,
            id="retrying-before-nextRetryAt-waits",
        ),
        pytest.param(
            make_schedule(phase=Phase.RETRYING, retry_count=1, next_retry=T0 + sec(30)),
            T0 + sec(30),
            Action.APPLY,
            id="retrying-at-nextRetryAt-applies",
        ),
        pytest.param(
            make_schedule(phase=Phase.RETRYING, retry_count=2, next_retry=T0 + sec(3600), deadline=60),
            T0 + sec(3600),
            Action.APPLY,
            id="retrying-past-deadline-still-applies",
        ),
        pytest.param(make_schedule(cancelled=True), T0 - sec(100), Action.CANCEL, id="cancelled-before-due"),
        pytest.param(make_schedule(cancelled=True), T0 + sec(100), Action.CANCEL, id="cancelled-after-due"),
        pytest.param(
            make_schedule(cancelled=True, deadline=1), T0 + sec(100), Action.CANCEL, id="cancel-beats-missed-deadline"
        ),
        pytest.param(
            make_schedule(phase=Phase.RETRYING, retry_count=1, next_retry=T0 + sec(30), cancelled=True),
            T0,
            Action.CANCEL,
            id="cancelled-while-retrying",
        ),
        *(
            pytest.param(
                make_schedule(phase=phase, cancelled=cancelled), T0 + sec(1), Action.NOTHING, id=f"{phase}{tag}"
            )
            for phase in (Phase.APPLIED, Phase.FAILED, Phase.CANCELLED, Phase.MISSED)
            for cancelled, tag in ((False, ""), (True, "-cancelled"))
        ),
    ],
)
def test_action(schedule: FlagSchedule, now: datetime, expected: Action) -> None:
    assert action(schedule, now) is expected


@pytest.mark.parametrize(
    ("retry_count", "now", "expected"),
    [
        pytest.param(0, T0 + sec(59), False, id="first-attempt-within-deadline"),
        pytest.param(0, T0 + sec(60), False, id="first-attempt-on-deadline"),
        pytest.param(0, T0 + sec(61), True, id="first-attempt-late"),
        pytest.param(1, T0 + sec(61), False, id="retry-1-late-is-not-missed"),
        pytest.param(5, T0 + timedelta(days=1), False, id="retry-5-very-late-is-not-missed"),
    ],
)
def test_deadline_only_checked_for_first_attempt(retry_count: int, now: datetime, expected: bool) -> None:
    phase = Phase.RETRYING if retry_count else Phase.PENDING
    schedule = make_schedule(phase=phase, retry_count=retry_count, next_retry=T0, deadline=60)
    assert deadline_missed(schedule, now) is expected


def test_no_deadline_is_never_missed() -> None:
    assert deadline_missed(make_schedule(), T0 + timedelta(days=10_000)) is False


# --- backoff --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retry_count", "expected"),
    [
        pytest.param(1, 30, id="retry-1"),
        pytest.param(2, 60, id="retry-2"),
        pytest.param(3, 120, id="retry-3"),
        pytest.param(4, 240, id="retry-4"),
        pytest.param(5, 480, id="retry-5"),
        pytest.param(6, 960, id="retry-6"),
        pytest.param(7, 1920, id="retry-7"),
        pytest.param(8, 3600, id="retry-8-capped"),
        pytest.param(9, 3600, id="retry-9-capped"),
        pytest.param(100, 3600, id="retry-100-capped"),
        pytest.param(10**6, 3600, id="retry-huge-capped-no-overflow"),
    ],
)
def test_backoff_sequence_without_jitter(retry_count: int, expected: float) -> None:
    assert backoff_seconds(retry_count, LIMITS, jitter_draw=0.0) == expected


@pytest.mark.parametrize(
    ("draw", "expected"),
    [
        pytest.param(0.0, 120.0, id="draw-0-full-backoff"),
        pytest.param(0.5, 114.0, id="draw-half-takes-5-percent"),
        pytest.param(0.999, 108.012, id="draw-near-1-takes-almost-10-percent"),
    ],
)
def test_backoff_jitter_is_subtractive(draw: float, expected: float) -> None:
    assert backoff_seconds(3, LIMITS, draw) == pytest.approx(expected)


def test_backoff_max_below_base_caps_the_first_retry() -> None:
    assert backoff_seconds(1, RetryLimits(3, backoff_seconds=30, max_backoff_seconds=10), 0.0) == 10


@pytest.mark.parametrize("retry_count", [0, -1], ids=["zero", "negative"])
def test_backoff_rejects_retry_count_below_one(retry_count: int) -> None:
    with pytest.raises(ValueError, match="retry_count must be >= 1"):
        backoff_seconds(retry_count, LIMITS, 0.0)


def test_next_retry_at_adds_backoff_to_now() -> None:
    assert next_retry_at(T0, 2, LIMITS, 0.5) == T0 + sec(57)


@pytest.mark.parametrize(
    ("retry_count", "max_retries", "expected"),
    [
        pytest.param(0, 3, False, id="first-failure-retries"),
        pytest.param(2, 3, False, id="one-retry-left"),
        pytest.param(3, 3, True, id="all-retries-used"),
        pytest.param(4, 3, True, id="beyond-limit"),
        pytest.param(0, 0, True, id="max-retries-0-fails-at-once"),
        pytest.param(99, 100, False, id="max-retries-100-one-left"),
        pytest.param(100, 100, True, id="max-retries-100-used"),
    ],
)
def test_retries_exhausted(retry_count: int, max_retries: int, expected: bool) -> None:
    assert retries_exhausted(retry_count, RetryLimits(max_retries, 30, 3600)) is expected


# --- order, head of line, next action -------------------------------------------------------------


def test_order_key_is_scheduled_at_then_name() -> None:
    schedules = [
        make_schedule("b", T0),
        make_schedule("c", T0 - sec(1)),
        make_schedule("a", T0),
        make_schedule("a-later", T0 + sec(1)),
    ]
    assert [s.ref.name for s in sorted(schedules, key=order_key)] == ["c", "a", "b", "a-later"]


def test_order_key_compares_instants_across_offsets() -> None:
    plus_two = timezone(timedelta(hours=2))
    same_instant = make_schedule("a", T0.astimezone(plus_two))
    assert order_key(same_instant) == order_key(make_schedule("a", T0))
    assert sorted([make_schedule("b", T0), same_instant], key=order_key)[0] is same_instant


@pytest.mark.parametrize(
    ("schedules", "expected"),
    [
        pytest.param([], None, id="empty"),
        pytest.param([make_schedule("a", T0)], "a", id="single"),
        pytest.param([make_schedule("late", T0 + sec(60)), make_schedule("early", T0)], "early", id="earliest-wins"),
        pytest.param([make_schedule("b", T0), make_schedule("a", T0)], "a", id="tie-broken-by-name"),
        pytest.param(
            [make_schedule("done", T0 - sec(60), phase=Phase.APPLIED), make_schedule("next", T0)],
            "next",
            id="terminal-skipped",
        ),
        pytest.param(
            [make_schedule("x", T0 - sec(60), cancelled=True), make_schedule("next", T0)],
            "next",
            id="cancelled-never-blocks",
        ),
        pytest.param(
            [
                make_schedule("later", T0 + sec(10)),
                make_schedule("retrying", T0, phase=Phase.RETRYING, retry_count=2, next_retry=T0 + sec(3600)),
            ],
            "retrying",
            id="retrying-blocks-later-schedule-due-sooner",
        ),
        pytest.param(
            [make_schedule(p, T0, phase=p) for p in (Phase.APPLIED, Phase.FAILED, Phase.CANCELLED, Phase.MISSED)],
            None,
            id="all-terminal",
        ),
    ],
)
def test_head_of_line(schedules: list[FlagSchedule], expected: str | None) -> None:
    head = head_of_line(schedules)
    assert (None if head is None else head.ref.name) == expected


NOW = T0 - sec(600)


# --- properties -----------------------------------------------------------------------------------

draws = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
retry_counts = st.integers(min_value=1, max_value=10_000)


@st.composite
def retry_limits(draw: st.DrawFn) -> RetryLimits:
    base = draw(st.floats(min_value=0.001, max_value=86_400, allow_nan=False))
    cap = draw(st.floats(min_value=base, max_value=30 * 86_400, allow_nan=False))
    return RetryLimits(max_retries=draw(st.integers(0, 100)), backoff_seconds=base, max_backoff_seconds=cap)


def undrawn(retry_count: int, limits: RetryLimits) -> float:
    """The backoff before jitter: the documented ``min(max, base * 2^(n-1))``."""
    return min(limits.max_backoff_seconds, limits.backoff_seconds * 2 ** min(retry_count - 1, 64))


@given(retry_counts, retry_limits(), draws)
def test_backoff_is_positive_and_never_above_cap(retry_count: int, limits: RetryLimits, draw: float) -> None:
    delay = backoff_seconds(retry_count, limits, draw)
    assert 0 < delay <= limits.max_backoff_seconds


@given(retry_counts, retry_limits(), draws)
def test_jitter_stays_within_documented_bound(retry_count: int, limits: RetryLimits, draw: float) -> None:
    capped = undrawn(retry_count, limits)
    delay = backoff_seconds(retry_count, limits, draw)
    assert (1 - JITTER) * capped <= delay <= capped


@given(retry_counts, retry_limits(), draws)
def test_backoff_non_decreasing_for_fixed_draw(retry_count: int, limits: RetryLimits, draw: float) -> None:
    # The jitter factor depends only on the draw, so for one draw the sequence keeps the doubling's order.
    assert backoff_seconds(retry_count, limits, draw) <= backoff_seconds(retry_count + 1, limits, draw)


@given(st.datetimes(timezones=st.just(UTC)), retry_counts, retry_limits(), draws)
def test_next_retry_at_is_now_plus_backoff(now: datetime, retry_count: int, limits: RetryLimits, draw: float) -> None:
    # Datetimes near year 9999 would overflow; the operator's clock is nowhere near there.
    delay = sec(backoff_seconds(retry_count, limits, draw))
    assume(now <= datetime.max.replace(tzinfo=UTC) - delay)
    assert next_retry_at(now, retry_count, limits, draw) - now == delay


@given(st.integers(0, 200), st.integers(0, 100))
def test_retries_exhausted_exactly_at_max(retry_count: int, max_retries: int) -> None:
    assert retries_exhausted(retry_count, RetryLimits(max_retries, 30, 3600)) is (retry_count >= max_retries)


# Few distinct offsets so that ties in scheduledAt are common; names are unique as in one namespace.
entries = st.lists(
    st.tuples(st.integers(-3, 3), st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True)),
    max_size=12,
    unique_by=lambda e: e[1],
)


@given(entries, st.randoms(use_true_random=False))
def test_order_key_is_total_and_stable(entries: list[tuple[int, str]], rnd: Any) -> None:
    schedules = [make_schedule(name, T0 + sec(60 * minutes)) for minutes, name in entries]
    shuffled = schedules[:]
    rnd.shuffle(shuffled)
    by_key = [s.ref.name for s in sorted(schedules, key=order_key)]
    assert [s.ref.name for s in sorted(shuffled, key=order_key)] == by_key
    assert by_key == [name for _, name in sorted(entries)]


@given(entries, st.randoms(use_true_random=False))
def test_head_of_line_is_first_in_order_whatever_the_input_order(entries: list[tuple[int, str]], rnd: Any) -> None:
    schedules = [make_schedule(name, T0 + sec(60 * minutes)) for minutes, name in entries]
    rnd.shuffle(schedules)
    head = head_of_line(schedules)
    expected = min(entries, default=None)
    assert (None if head is None else head.ref.name) == (None if expected is None else expected[1])
