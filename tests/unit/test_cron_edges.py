"""The DST rule of recurring windows, checked against a brute-force minute-by-minute oracle.

The oracle walks every UTC minute, looks at the wall clock in the zone, and fires by the rule in
words (``flag_scheduler.cronschedule.edges``'s docstring); it shares no code with cronsim. Zones:
Europe/Berlin, America/New_York, Australia/Lord_Howe (a 30-minute shift), America/Sao_Paulo
(DST at midnight until Brazil abolished it in 2019) and Pacific/Apia (skipped 30 December 2011).
"""

from __future__ import annotations

import calendar
import functools
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flag_scheduler.cronschedule.edges import (
    Edge,
    EdgeKind,
    InvalidRecurrence,
    edge_schedule_name,
    edges_between,
    in_window,
    latest_edge,
    latest_occurrence,
    load_zone,
    next_edge,
    next_occurrence,
    recurrence,
)

MINUTE = timedelta(minutes=1)
RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 6)]

# (zone, UTC midnight of the local gap day, of the local repeated-hour day)
ZONES = {
    "Europe/Berlin": (datetime(2026, 3, 29, tzinfo=UTC), datetime(2026, 10, 25, tzinfo=UTC)),
    "America/New_York": (datetime(2026, 3, 8, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)),
    "Australia/Lord_Howe": (datetime(2026, 10, 4, tzinfo=UTC), datetime(2026, 4, 5, tzinfo=UTC)),
    "America/Sao_Paulo": (datetime(2018, 11, 4, tzinfo=UTC), datetime(2019, 2, 17, tzinfo=UTC)),
    "Pacific/Apia": (datetime(2011, 12, 30, tzinfo=UTC), datetime(2011, 4, 3, tzinfo=UTC)),
}


def _field(text: str, lo: int, hi: int) -> set[int]:
    values: set[int] = set()
    for term in text.split(","):
        base, _, step = term.partition("/")
        if base == "*":
            first, last = lo, hi
        elif "-" in base:
            first, last = (int(x) for x in base.split("-"))
        else:
            first = last = int(base)
            if step:
                last = hi
        values.update(range(first, last + 1, int(step or 1)))
    return values


@functools.lru_cache(maxsize=256)
def _fields(expr: str) -> tuple[set[int], ...]:
    minute, hour, dom, month, dow = (_field(f, lo, hi) for f, (lo, hi) in zip(expr.split(), RANGES))
    return minute, hour, dom, month, {d % 7 for d in dow}


def matches(expr: str, wall: datetime) -> bool:
    """Vixie/Debian cron matching of a naive wall-clock minute (day-of-month OR day-of-week if both restricted)."""
    fields = expr.split()
    minute, hour, dom, month, dow = _fields(expr)
    day_ok = wall.day in dom, (wall.weekday() + 1) % 7 in dow
    day = all(day_ok) if fields[2].startswith("*") or fields[4].startswith("*") else any(day_ok)
    return wall.minute in minute and wall.hour in hour and wall.month in month and day


def oracle(expr: str, zone: ZoneInfo, begin: datetime, end: datetime) -> list[datetime]:
    """Every UTC minute in [begin, end) at which the rule says ``expr`` fires."""
    elapsed = expr.split()[0].startswith("*") or expr.split()[1].startswith("*")
    fired = []
    previous = (begin - MINUTE).astimezone(zone).replace(tzinfo=None)
    moment = begin
    while moment < end:
        local = moment.astimezone(zone)
        wall = local.replace(tzinfo=None)
        if elapsed:
            fire = matches(expr, wall)
        else:
            skipped = previous + MINUTE
            gap = False
            while skipped < wall:  # wall-clock minutes a forward jump skipped: fire at the first real one
                gap = gap or matches(expr, skipped)
                skipped += MINUTE
            fire = gap or (matches(expr, wall) and local.fold == 0 and wall > previous)
        if fire:
            fired.append(moment)
        previous = max(previous, wall) if not elapsed else wall
        moment += MINUTE
    return fired


def computed(expr: str, zone: ZoneInfo, begin: datetime, end: datetime) -> list[datetime]:
    out, cursor = [], begin - timedelta(seconds=1)
    while (moment := next_occurrence(expr, zone, cursor)) is not None and moment < end:
        out.append(moment)
        cursor = moment
    return out


minutes = st.sampled_from(["0", "30", "15", "45", "59", "*/15", "*/20", "*", "0,30", "10-20/5", "*/7"])
hours = st.sampled_from(["0", "1", "2", "3", "4", "9", "23", "2,3", "1-3", "*/2", "*", "0-23/3", "22-23"])
doms = st.sampled_from(["*", "*", "1-31", "4", "30,31", "*/2"])
dows = st.sampled_from(["*", "*", "0", "1-5", "0,6", "*/3"])
expressions = st.builds(lambda m, h, d, w: f"{m} {h} {d} * {w}", minutes, hours, doms, dows)


@settings(max_examples=80, deadline=None)
@given(expressions, st.sampled_from(sorted(ZONES)), st.booleans())
def test_occurrences_match_the_oracle_on_gap_and_repeated_hour_days(expr: str, zone_name: str, gap: bool) -> None:
    zone = load_zone(zone_name)
    day = ZONES[zone_name][0 if gap else 1]
    begin, end = day - timedelta(hours=14), day + timedelta(hours=38)
    assert computed(expr, zone, begin, end) == oracle(expr, zone, begin, end)


@settings(max_examples=80, deadline=None)
@given(expressions, st.sampled_from(sorted(ZONES)), st.booleans(), st.integers(0, 48 * 60 * 60))
def test_latest_occurrence_is_the_oracles_last_at_or_before_now(
    expr: str, zone_name: str, gap: bool, offset: int
) -> None:
    zone = load_zone(zone_name)
    day = ZONES[zone_name][0 if gap else 1]
    begin = day - timedelta(days=3)
    now = day - timedelta(hours=6) + timedelta(seconds=offset)
    fired = [m for m in oracle(expr, zone, begin, now + MINUTE) if m <= now]
    if fired:  # the oracle saw at least one within three days
        assert latest_occurrence(expr, zone, now) == fired[-1]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("zone", "expr", "after", "expected"),
    [
        # Berlin springs forward 02:00 -> 03:00 CEST on 29 March 2026: 02:30 fires at 03:00 CEST.
        ("Europe/Berlin", "30 2 * * *", utc(2026, 3, 28, 12), utc(2026, 3, 29, 1, 0)),
        # Berlin falls back 03:00 -> 02:00 on 25 October 2026: 02:30 fires once, in CEST.
        ("Europe/Berlin", "30 2 * * *", utc(2026, 10, 24, 12), utc(2026, 10, 25, 0, 30)),
        ("Europe/Berlin", "30 2 * * *", utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)),
        # Elapsed time: every 30 minutes runs in both passes of the repeated hour...
        ("Europe/Berlin", "*/30 2 * * *", utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 0)),
        # ...and not at all in the hour that does not exist.
        ("Europe/Berlin", "*/30 2 * * *", utc(2026, 3, 28, 12), utc(2026, 3, 30, 0, 0)),
        # Lord Howe moves 30 minutes: 02:15 falls in the gap 02:00-02:30 and fires at 02:30 (+11).
        ("Australia/Lord_Howe", "15 2 * * *", utc(2026, 10, 3, 10), utc(2026, 10, 3, 15, 30)),
        # Apia skipped 30 December 2011: noon that day fires at the first instant after, 31 Dec 00:00.
        ("Pacific/Apia", "0 12 * * *", utc(2011, 12, 29, 23), utc(2011, 12, 30, 10, 0)),
        # Sao Paulo's spring-forward was at midnight: 00:00 fires at 01:00 -02.
        ("America/Sao_Paulo", "0 0 * * *", utc(2018, 11, 3, 12), utc(2018, 11, 4, 3, 0)),
    ],
)
def test_dst_table(zone: str, expr: str, after: datetime, expected: datetime) -> None:
    assert next_occurrence(expr, load_zone(zone), after) == expected


BUSINESS = recurrence("0 9 * * 1-5", "0 18 * * 1-5", "Europe/Berlin")
WEDNESDAY = utc(2026, 12, 2)  # CET = UTC+1


def test_a_window_opens_at_the_start_and_closes_at_the_end() -> None:
    assert next_edge(BUSINESS, WEDNESDAY) == Edge(EdgeKind.START, utc(2026, 12, 2, 8))
    assert next_edge(BUSINESS, utc(2026, 12, 2, 8)) == Edge(EdgeKind.END, utc(2026, 12, 2, 17))
    assert in_window(BUSINESS, utc(2026, 12, 2, 12))
    assert not in_window(BUSINESS, utc(2026, 12, 2, 20))


def test_down_from_0850_to_1830_converges_on_the_1800_end_with_the_0900_start_missed() -> None:
    down, up = utc(2026, 12, 2, 7, 50), utc(2026, 12, 2, 17, 30)
    assert latest_edge(BUSINESS, up) == Edge(EdgeKind.END, utc(2026, 12, 2, 17))
    assert edges_between(BUSINESS, down, utc(2026, 12, 2, 17)) == 1


def test_a_window_may_cross_midnight() -> None:
    night = recurrence("0 22 * * *", "0 6 * * *", "America/New_York")
    assert in_window(night, utc(2026, 12, 2, 8))  # 03:00 EST
    assert next_edge(night, utc(2026, 12, 2, 8)) == Edge(EdgeKind.END, utc(2026, 12, 2, 11))


def test_a_start_and_an_end_on_the_same_instant_is_one_start_edge() -> None:
    rec = recurrence("0 9 * * *", "0 9 * * 1", "UTC")
    monday = utc(2026, 11, 30, 9)
    assert latest_edge(rec, monday) == Edge(EdgeKind.START, monday)
    assert next_edge(rec, monday - MINUTE) == Edge(EdgeKind.START, monday)


def test_a_plain_recurring_change_has_only_starts() -> None:
    rec = recurrence("0 3 * * 0", None, "UTC")
    assert next_edge(rec, WEDNESDAY) == Edge(EdgeKind.START, utc(2026, 12, 6, 3))
    assert latest_edge(rec, WEDNESDAY) == Edge(EdgeKind.START, utc(2026, 11, 29, 3))


def test_a_rare_expression_is_found_far_back() -> None:
    leap_monday = recurrence("0 0 29 2 1", None, "UTC")  # day-of-month OR Monday: every Monday in February too
    assert latest_edge(leap_monday, WEDNESDAY) == Edge(EdgeKind.START, utc(2026, 2, 23))
    only_leap = recurrence("0 0 29 2 *", None, "UTC")
    assert latest_edge(only_leap, WEDNESDAY) == Edge(EdgeKind.START, utc(2024, 2, 29))


def test_missed_edges_are_counted_up_to_a_cap() -> None:
    every_minute = recurrence("* * * * *", None, "UTC")
    assert edges_between(every_minute, WEDNESDAY, WEDNESDAY + timedelta(minutes=10)) == 9
    assert edges_between(every_minute, WEDNESDAY, WEDNESDAY + timedelta(days=30)) == 1_000


def test_edge_names_come_from_the_utc_instant() -> None:
    edge = Edge(EdgeKind.END, datetime(2026, 12, 2, 18, 0, tzinfo=ZoneInfo("Europe/Berlin")))
    assert edge_schedule_name("promo", edge) == "promo-end-202612021700"


@pytest.mark.parametrize(
    ("start", "end", "zone", "message"),
    [
        ("CRON_TZ=UTC 0 9 * * *", None, "UTC", "spec.start.schedule: TZ= and CRON_TZ= are not allowed"),
        ("0 9 * * *", "TZ=Europe/Berlin 0 18 * * *", "UTC", "spec.end.schedule: TZ= and CRON_TZ="),
        ("0 0 9 * * *", None, "UTC", "spec.start.schedule: '0 0 9 * * *' must have 5 fields"),
        ("61 9 * * *", None, "UTC", "spec.start.schedule: '61 9 * * *' is not a valid cron expression"),
        ("0 0 30 2 *", None, "UTC", "spec.start.schedule: '0 0 30 2 *' is not a valid cron expression"),
        ("0 9 * * *", "0  9 * * *", "UTC", "spec.end.schedule: must differ from spec.start.schedule"),
        ("0 9 * * *", None, "Mars/Olympus_Mons", "spec.timeZone: unknown time zone 'Mars/Olympus_Mons'"),
        ("0 9 * * *", None, "../../etc/passwd", "spec.timeZone: unknown time zone"),
    ],
)
def test_what_the_operator_cannot_use_is_refused_naming_the_field(
    start: str, end: str | None, zone: str, message: str
) -> None:
    with pytest.raises(InvalidRecurrence, match=re.escape(message)):
        recurrence(start, end, zone)


def test_zones_come_from_the_pinned_tzdata_package() -> None:
    assert load_zone("Europe/Berlin").key == "Europe/Berlin"
    assert calendar.isleap(2024)  # the leap-day case above relies on it


fields = st.lists(st.sampled_from(["*", "0", "5", "L", "LW", "1-5", "*/0", "5#5", "MON", "FEB", "?", "W", "60", "31",
                                   "29", "2", "1L", "*/61", "0-0", "7", "SUN-SAT", "L-1", "#", "-", ","]),
                  min_size=5, max_size=5)


@settings(max_examples=300, deadline=None)
@given(fields, fields, st.sampled_from(["UTC", "Europe/Berlin", "Australia/Lord_Howe", "Pacific/Apia"]))
def test_whatever_the_schema_admits_is_refused_by_name_or_computed(start: list[str], end: list[str], zone: str) -> None:
    """Never an exception other than InvalidRecurrence, never a hang: the controller can always answer."""
    try:
        rec = recurrence(" ".join(start), " ".join(end), zone)
    except InvalidRecurrence as err:
        assert str(err).startswith(("spec.start.schedule: ", "spec.end.schedule: "))
        return
    now = datetime(2026, 12, 2, tzinfo=UTC)
    upcoming, latest = next_edge(rec, now), latest_edge(rec, now)
    assert upcoming is None or upcoming.at > now
    assert latest is None or latest.at <= now
