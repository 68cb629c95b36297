"""Serving flags to OpenFeature SDKs (flagd sync over gRPC, OFREP over HTTP): read-only."""
