"""Operator configuration: one pydantic-settings class, environment prefix ``FLAG_SCHEDULER_``."""

from __future__ import annotations

import json
import os
import re
import socket
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from flag_scheduler import failpoints
from flag_scheduler.models import RetryPolicy
from flag_scheduler.timing import RetryLimits

_ORIGIN = re.compile(r"https?://[^/\s?#]+")


class Settings(BaseSettings):
    """Every setting, read once at start; an invalid value stops the process naming the variable."""

    model_config = SettingsConfigDict(env_prefix="FLAG_SCHEDULER_", extra="ignore")

    max_retries: int = Field(3, ge=0, le=100, description="Retries after the first failed attempt.")
    backoff_seconds: float = Field(30, gt=0, description="Delay before the first retry; doubles per retry.")
    max_backoff_seconds: float = Field(3600, gt=0, description="Cap on the delay between retries.")
    log_format: Literal["json", "console"] = Field("json", description="structlog renderer.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Namespaces to watch, a JSON list; empty = all."
    )
    health_port: int = Field(8080, ge=0, le=65535, description="Liveness/readiness at /healthz.")
    ready_port: int = Field(8081, ge=0, le=65535, description="Readiness at /readyz (0 = off).")
    metrics_port: int = Field(9090, ge=0, le=65535, description="Prometheus metrics at /metrics.")
    sync_port: int = Field(8015, ge=0, le=65535, description="flagd sync (gRPC) for OpenFeature SDKs; 0 = off.")
    ofrep_port: int = Field(8016, ge=0, le=65535, description="OFREP (HTTP) for OpenFeature SDKs; 0 = off.")
    serve_address: str = Field("0.0.0.0", min_length=1, description="Address the sync and OFREP ports listen on.")
    # Limits of the flag server (`flag-scheduler serve`); sized in the README's "Bounded serving".
    sync_max_streams: int = Field(
        8000, ge=1, le=100_000,
        description="flagd sync calls open at once per flag-server replica; more get RESOURCE_EXHAUSTED.",
    )
    sync_max_streams_per_connection: int = Field(
        100, ge=1, le=10_000, description="HTTP/2 streams one gRPC connection may open at once (the rest wait)."
    )
    sync_max_connection_age_seconds: float = Field(
        1800, ge=1, description="A gRPC connection is told to go away (GOAWAY) after this long: load rebalances."
    )
    sync_max_connection_age_grace_seconds: float = Field(
        30, ge=0, description="Calls on a connection past its age get this long before they are cut."
    )
    ofrep_max_connections: int = Field(
        1000, ge=1, le=100_000, description="OFREP connections open at once per replica; more are closed at once."
    )
    ofrep_max_body_bytes: int = Field(
        64 * 1024, ge=1024, le=16 * 1024 * 1024, description="Largest OFREP request body; larger gets 413."
    )
    ofrep_read_timeout_seconds: float = Field(
        5, gt=0, le=300, description="Time to send an OFREP request body; slower gets 408."
    )
    http_keepalive_timeout_seconds: float = Field(
        15, gt=0, le=3600,
        description="An OFREP or health/metrics connection that has not sent a whole request for this long is closed.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins whose pages may call OFREP (CORS), a JSON list; empty = none."
    )
    max_concurrency: int = Field(64, ge=1, le=10000, description="Flags changed in parallel.")
    lease_name: str = Field("flag-scheduler", description="Name of the leader-election Lease.")
    lease_namespace: str = Field(
        default_factory=lambda: os.environ.get("POD_NAMESPACE") or "flag-scheduler-system",
        description="Namespace of the Lease: the pod's own (POD_NAMESPACE), else flag-scheduler-system.",
    )
    # Whole seconds: the Lease stores leaseDurationSeconds as an integer.
    lease_duration_seconds: int = Field(15, ge=2, description="How long a Lease lasts without renewal.")
    renew_deadline_seconds: float = Field(10, ge=1, description="A leader that cannot renew for this long stops.")
    retry_period_seconds: float = Field(2, ge=1, description="Interval between acquire/renew attempts.")
    finished_ttl_seconds: int | None = Field(
        None, ge=0, le=2_147_483_647,
        description="Delete finished schedules this long after they finished, unless they say otherwise"
        " (spec.ttlSecondsAfterFinished). Unset: keep them (GitOps tools re-create what is deleted).",
    )
    admission_policies: Literal["check", "external"] = Field(
        "check", description="check: apply nothing while the shipped admission policies are not in force;"
        " external: the cluster enforces the same rules another way (see scheduling/admission_gate.py).",
    )
    admission_check_seconds: float = Field(
        60, ge=1, le=3600, description="How often the admission policies are checked again."
    )
    failpoints: str = Field(
        "", description="Comma-separated failpoints to arm (tests only; see flag_scheduler.failpoints)."
    )
    clock_offset_seconds: float = Field(
        0, ge=-315_360_000, le=315_360_000,  # ten years either way
        description="Tests only: the operator's clock runs this many seconds ahead of the host's (behind if"
        " negative), so a test can put a minute-granular cron edge a few seconds away. Off (0) by default.",
    )
    identity: str = Field(
        default_factory=lambda: os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    )

    @field_validator("failpoints")
    @classmethod
    def _known_failpoints(cls, value: str) -> str:
        failpoints.parse(value)
        return value

    @field_validator("namespaces", mode="before")
    @classmethod
    def _namespaces_json(cls, value: object) -> object:
        # Decoded here rather than by pydantic-settings, whose parse error names no variable.
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value) if value.strip() else []
        except ValueError:
            raise ValueError(f'must be a JSON list such as ["team-a", "team-b"], got {value!r}') from None

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _cors_origins_json(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value) if value.strip() else []
        except ValueError:
            raise ValueError(f'must be a JSON list such as ["https://app.example.com"], got {value!r}') from None

    @field_validator("cors_origins")
    @classmethod
    def _origins_only(cls, value: list[str]) -> list[str]:
        # Browsers send an origin as scheme://host[:port], nothing more: anything else never matches.
        for origin in value:
            if not _ORIGIN.fullmatch(origin):
                raise ValueError(f"{origin[:100]!r} is not an origin: write scheme://host[:port], no path or '/' at the end")
        return value

    @model_validator(mode="after")
    def _check_relations(self) -> Settings:
        if self.max_backoff_seconds < self.backoff_seconds:
            raise ValueError("FLAG_SCHEDULER_MAX_BACKOFF_SECONDS must be >= FLAG_SCHEDULER_BACKOFF_SECONDS")
        # The same relations client-go (and kubernetes.aio's elector) insist on.
        if not 1.2 * self.retry_period_seconds < self.renew_deadline_seconds < self.lease_duration_seconds:
            raise ValueError(
                "need 1.2 x FLAG_SCHEDULER_RETRY_PERIOD_SECONDS < FLAG_SCHEDULER_RENEW_DEADLINE_SECONDS"
                " < FLAG_SCHEDULER_LEASE_DURATION_SECONDS"
            )
        return self

    def retry_limits(self, policy: RetryPolicy | None) -> RetryLimits:
        """The operator defaults, overridden field by field by a schedule's ``spec.retry``."""
        policy = policy or RetryPolicy()
        return RetryLimits(
            max_retries=self.max_retries if policy.max_retries is None else policy.max_retries,
            backoff_seconds=self.backoff_seconds if policy.backoff_seconds is None else policy.backoff_seconds,
            max_backoff_seconds=(
                self.max_backoff_seconds if policy.max_backoff_seconds is None else policy.max_backoff_seconds
            ),
        )


def load_settings() -> Settings:
    """Read the environment; exit with one line per bad variable if it is invalid."""
    try:
        return Settings()
    except ValidationError as err:
        lines = []
        for e in err.errors():
            var = "FLAG_SCHEDULER_" + "_".join(str(p) for p in e["loc"]).upper() if e["loc"] else ""
            lines.append(f"invalid configuration: {var} {e['msg']}".replace("  ", " "))
        raise SystemExit("\n".join(lines)) from None
