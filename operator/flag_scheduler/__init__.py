"""flag-scheduler: a Kubernetes operator that changes feature flags at scheduled times, exactly once."""

__version__ = "0.1.0"
