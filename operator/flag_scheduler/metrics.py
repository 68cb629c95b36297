"""Prometheus metrics, served on the metrics port at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

APPLIED = Counter("flag_scheduler_schedules_applied_total", "Schedules applied to their flag.")
RETRIED = Counter("flag_scheduler_schedules_retried_total", "Failed attempts that will be retried.")
FAILED = Counter("flag_scheduler_schedules_failed_total", "Schedules that ran out of retries.")
MISSED = Counter("flag_scheduler_schedules_missed_total", "Schedules reached after their starting deadline.")
SUPERSEDED = Counter(
    "flag_scheduler_schedules_superseded_total", "Schedules not applied because a newer one had changed the flag."
)
CANCELLED = Counter("flag_scheduler_schedules_cancelled_total", "Schedules cancelled before they ran.")
DELETED = Counter("flag_scheduler_schedules_deleted_total", "Finished schedules deleted after their TTL.")
ERRORS = Counter(
    "flag_scheduler_errors_total", "Work on a flag that failed unexpectedly and is retried with backoff.", ["stage"]
)
EVENTS_DROPPED = Counter("flag_scheduler_events_dropped_total", "Events not posted because too many were queued.")
LATENESS = Histogram(
    "flag_scheduler_lateness_seconds",
    "Time from a schedule's due time to its flag change.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
PENDING = Gauge("flag_scheduler_pending_schedules", "Schedules not yet terminal (Pending or Retrying).")
ADMISSION_PROBLEMS = Gauge(
    "flag_scheduler_admission_policies_missing",
    "Required admission policies not in force (0 when all are, or when the check is external); no schedule"
    " is applied while above 0.",
)
IS_LEADER = Gauge("flag_scheduler_is_leader", "1 while this replica holds the leader Lease.")
SYNC_STREAMS = Gauge("flag_scheduler_sync_streams", "flagd sync streams (SyncFlags) connected to this replica.")
SYNC_PUSHES = Counter("flag_scheduler_sync_pushes_total", "Flag sets sent on sync streams.")
OFREP_REQUESTS = Counter("flag_scheduler_ofrep_requests_total", "OFREP evaluation requests by HTTP status.", ["code"])
NAMESPACE_READABLE = Gauge(
    "flag_scheduler_namespace_readable",
    "1 while this process can list and watch the namespace (\"\" = every namespace), 0 while it is refused.",
    ["namespace"],
)
