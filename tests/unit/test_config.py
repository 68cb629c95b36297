"""The operator's configuration: defaults, the relations between settings, and errors that name the variable."""

from __future__ import annotations

import pytest

from flag_scheduler.config import Settings, load_settings
from flag_scheduler.models import RetryPolicy
from flag_scheduler.timing import RetryLimits

ELECTION = ("LEASE_DURATION_SECONDS", "RENEW_DEADLINE_SECONDS", "RETRY_PERIOD_SECONDS")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No FLAG_SCHEDULER_*, POD_NAME or POD_NAMESPACE from the shell that runs the tests."""
    import os

    for var in list(os.environ):
        if var.startswith("FLAG_SCHEDULER_") or var in ("POD_NAME", "POD_NAMESPACE"):
            monkeypatch.delenv(var)
    return monkeypatch


def settings_with(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for key, value in env.items():
        monkeypatch.setenv(f"FLAG_SCHEDULER_{key}", value)
    return load_settings()


def error_of(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    with pytest.raises(SystemExit) as stop:
        settings_with(monkeypatch, **env)
    return str(stop.value)


def test_defaults_are_the_documented_ones(clean_env: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert (s.max_retries, s.backoff_seconds, s.max_backoff_seconds) == (3, 30, 3600)
    assert (s.lease_duration_seconds, s.renew_deadline_seconds, s.retry_period_seconds) == (15, 10, 2)
    assert (s.health_port, s.metrics_port, s.max_concurrency) == (8080, 9090, 64)
    assert (s.lease_name, s.lease_namespace, s.namespaces) == ("flag-scheduler", "flag-scheduler-system", [])
    assert (s.log_format, s.log_level) == ("json", "info")


def test_pod_namespace_and_pod_name_come_from_the_downward_api(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("POD_NAMESPACE", "ops")
    clean_env.setenv("POD_NAME", "flag-scheduler-7d9f-abcde")
    s = load_settings()
    assert (s.lease_namespace, s.identity) == ("ops", "flag-scheduler-7d9f-abcde")
    assert settings_with(clean_env, LEASE_NAMESPACE="elsewhere").lease_namespace == "elsewhere"


def test_namespaces_are_a_json_list(clean_env: pytest.MonkeyPatch) -> None:
    assert settings_with(clean_env, NAMESPACES='["a", "b"]').namespaces == ["a", "b"]


def test_cors_origins_are_a_json_list_of_origins_and_none_by_default(clean_env: pytest.MonkeyPatch) -> None:
    assert load_settings().cors_origins == []
    origins = '["https://app.example.com", "http://127.0.0.1:8080"]'
    assert settings_with(clean_env, CORS_ORIGINS=origins).cors_origins == ["https://app.example.com", "http://127.0.0.1:8080"]


@pytest.mark.parametrize(
    ("backoff", "max_backoff", "ok"),
    [("30", "30", True), ("30", "3600", True), ("30", "29", False), ("1", "0.5", False)],
)
def test_max_backoff_must_not_be_below_backoff(
    clean_env: pytest.MonkeyPatch, backoff: str, max_backoff: str, ok: bool
) -> None:
    env = {"BACKOFF_SECONDS": backoff, "MAX_BACKOFF_SECONDS": max_backoff}
    if ok:
        assert settings_with(clean_env, **env).max_backoff_seconds == float(max_backoff)
    else:
        message = error_of(clean_env, **env)
        assert "FLAG_SCHEDULER_MAX_BACKOFF_SECONDS must be >= FLAG_SCHEDULER_BACKOFF_SECONDS" in message


@pytest.mark.parametrize(
    ("lease", "renew", "retry", "ok"),
    [
        ("15", "10", "2", True),
        ("3", "2", "1", True),  # the fast election the failover tests use
        ("10", "10", "2", False),  # renew deadline must be below the lease duration
        ("10", "11", "2", False),
        ("15", "2.4", "2", False),  # 1.2 x retry period == renew deadline: not strictly below
        ("15", "2.5", "2", True),
        ("15", "10", "9", False),  # 1.2 x 9 = 10.8 > 10
    ],
)
def test_election_timings_keep_client_gos_relations(
    clean_env: pytest.MonkeyPatch, lease: str, renew: str, retry: str, ok: bool
) -> None:
    env = dict(zip(ELECTION, (lease, renew, retry), strict=True))
    if ok:
        s = settings_with(clean_env, **env)
        assert 1.2 * s.retry_period_seconds < s.renew_deadline_seconds < s.lease_duration_seconds
    else:
        assert "need 1.2 x FLAG_SCHEDULER_RETRY_PERIOD_SECONDS < FLAG_SCHEDULER_RENEW_DEADLINE_SECONDS" \
            " < FLAG_SCHEDULER_LEASE_DURATION_SECONDS" in error_of(clean_env, **env)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("MAX_RETRIES", "-1"), ("MAX_RETRIES", "101"), ("MAX_RETRIES", "lots"),
        ("BACKOFF_SECONDS", "0"), ("MAX_BACKOFF_SECONDS", "0"),
        ("HEALTH_PORT", "65536"), ("METRICS_PORT", "-1"), ("MAX_CONCURRENCY", "0"),
        ("LEASE_DURATION_SECONDS", "1"), ("LEASE_DURATION_SECONDS", "2.5"),
        ("RETRY_PERIOD_SECONDS", "0.5"), ("RENEW_DEADLINE_SECONDS", "0"),
        ("LOG_FORMAT", "xml"), ("LOG_LEVEL", "verbose"), ("NAMESPACES", "default"), ("FINISHED_TTL_SECONDS", "-1"),
        ("CORS_ORIGINS", "https://app.example.com"), ("CORS_ORIGINS", '["https://app.example.com/"]'),
        ("CORS_ORIGINS", '["*"]'), ("CORS_ORIGINS", '["app.example.com"]'),
    ],
)
def test_a_bad_value_stops_with_a_line_naming_the_variable(clean_env: pytest.MonkeyPatch, var: str, value: str) -> None:
    message = error_of(clean_env, **{var: value})
    assert message.startswith(f"invalid configuration: FLAG_SCHEDULER_{var} "), message


def test_every_bad_variable_gets_its_own_line(clean_env: pytest.MonkeyPatch) -> None:
    lines = error_of(clean_env, MAX_RETRIES="x", HEALTH_PORT="70000").splitlines()
    assert sorted(line.split()[2] for line in lines) == ["FLAG_SCHEDULER_HEALTH_PORT", "FLAG_SCHEDULER_MAX_RETRIES"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ((None, None, None), RetryLimits(3, 30, 3600)),
        ((0, None, None), RetryLimits(0, 30, 3600)),  # 0 is a value, not "unset"
        ((None, 5, None), RetryLimits(3, 5, 3600)),
        ((7, 1, 10), RetryLimits(7, 1, 10)),
    ],
)
def test_spec_retry_overrides_the_defaults_field_by_field(
    clean_env: pytest.MonkeyPatch, override: tuple, expected: RetryLimits
) -> None:
    retries, backoff, max_backoff = override
    policy = RetryPolicy(max_retries=retries, backoff_seconds=backoff, max_backoff_seconds=max_backoff)
    assert load_settings().retry_limits(policy) == expected
    if override == (None, None, None):
        assert load_settings().retry_limits(None) == expected  # no spec.retry at all


def test_an_unknown_failpoint_stops_the_process_naming_the_variable(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("FLAG_SCHEDULER_FAILPOINTS", "apply.before-flag-patch,apply.typo")
    with pytest.raises(SystemExit, match="FLAG_SCHEDULER_FAILPOINTS.*apply.typo"):
        load_settings()


def test_failpoints_are_off_unless_named(clean_env: pytest.MonkeyPatch) -> None:
    from flag_scheduler import failpoints

    assert Settings().failpoints == ""
    failpoints.arm(failpoints.parse(Settings().failpoints))
    failpoints.reach("apply.before-flag-patch")  # unarmed: returns at once, the process is not stopped
