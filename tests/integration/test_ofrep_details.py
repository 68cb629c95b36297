"""OFREP's details for every client: ``metadata`` on every body, reasons within OFREP's enum, CORS for listed origins."""

from __future__ import annotations

from collections.abc import Callable

import requests

from operator_harness import Cluster, OperatorProcess, wait_for
from sdk_clients import serve


def test_ofrep_bodies_carry_metadata_reasons_stay_in_the_enum_and_only_listed_origins_pass_cors(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    page = "https://app.example.com"
    served = serve(start_operator, FLAG_SCHEDULER_CORS_ORIGINS=f'["{page}"]')
    cluster.flag("half", enabled=True, rollout=50)
    base = served.ofrep_url(cluster.ns) + "/ofrep/v1/evaluate/flags"
    wait_for(lambda: requests.post(base + "/half", json={}, timeout=5).status_code == 200, what="flag half served")

    # Every body has metadata: success, flag not found, bad request (providers read it from errors too).
    missing = requests.post(base + "/nope", json={"context": {"targetingKey": "u"}}, timeout=5)
    assert (missing.status_code, missing.json()) == (404, {
        "key": "nope", "errorCode": "FLAG_NOT_FOUND", "errorDetails": "Flag with key nope not present in flag store.",
        "metadata": {"flagSetId": cluster.ns}})
    bad = requests.post(base, data=b"[", headers={"Content-Type": "application/json"}, timeout=5)
    assert bad.status_code == 400 and bad.json()["metadata"] == {"flagSetId": cluster.ns}
    # A rollout without a targeting key falls to the default variant: flagd says DEFAULT, OFREP's
    # enum has no such reason, and STATIC would let a client keep it for every context: UNKNOWN.
    keyless = requests.post(base + "/half", json={}, timeout=5).json()
    assert (keyless["value"], keyless["variant"], keyless["reason"]) == (False, "off", "UNKNOWN")
    keyed = requests.post(base + "/half", json={"context": {"targetingKey": "user-1"}}, timeout=5).json()
    assert keyed["reason"] == "TARGETING_MATCH" and keyed["metadata"] == {"flagSetId": cluster.ns}

    # CORS: the listed origin's preflight is answered and its answers expose the ETag; others get nothing.
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type,if-none-match"}
    allowed = requests.options(base, headers={"Origin": page, **preflight}, timeout=5)
    assert allowed.status_code == 204
    assert (allowed.headers["Access-Control-Allow-Origin"], allowed.headers["Access-Control-Allow-Headers"]) == (
        page, "content-type,if-none-match")
    bulk = requests.post(base, json={}, headers={"Origin": page}, timeout=5)
    assert bulk.headers["Access-Control-Allow-Origin"] == page and bulk.headers["Access-Control-Expose-Headers"] == "ETag"
    refused = requests.options(base, headers={"Origin": "https://evil.example.com", **preflight}, timeout=5)
    assert refused.status_code == 403 and "FLAG_SCHEDULER_CORS_ORIGINS" in refused.text
    assert "Access-Control-Allow-Origin" not in refused.headers
    other = requests.post(base, json={}, headers={"Origin": "https://evil.example.com"}, timeout=5)
    assert other.status_code == 200 and "Access-Control-Allow-Origin" not in other.headers
