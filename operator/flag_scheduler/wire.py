"""How times are written on the wire: the CRDs' millisecond RFC 3339 and the marker's full precision."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(moment: datetime) -> str:
    """Format a timestamp the way Kubernetes prints them (UTC, milliseconds): the CRDs' wire format."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 timestamp, or None if absent or unreadable (annotations are free text)."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def exact_time(moment: datetime) -> str:
    """A timestamp in UTC with all its digits, so a marker's ``scheduledAt`` compares exactly."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
