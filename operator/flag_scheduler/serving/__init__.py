"""The flag server workload (`flag-scheduler serve`): serves the FeatureFlags to OpenFeature SDKs, read-only."""
