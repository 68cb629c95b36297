"""Every SDK the README names, for real: JavaScript (server), Java and a browser, beside Python.

One operator serves one namespace; each runtime's client (``tests/clients/<runtime>``, installed
from its registry by ``tests/clients/install.py``) runs once, as a long-lived process: it evaluates
the rollout flags for many targeting keys, reports, then waits until a scheduled change reaches it
without a restart. The test then compares every client with OFREP key by key and checks the
README's agreement table (``AGREES_WITH_OFREP``) against what the clients answered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext

from operator_harness import Cluster, OperatorProcess, in_seconds, parse_time, wait_for
from sdk_clients import (
    PageServer,
    Served,
    bucket_cbor,
    bucket_concat,
    bucket_concat_percent,
    chromium_version,
    clients_installed,
    java_client,
    js_client,
    serve,
)

ROLLOUTS = {f"rollout-{p}": p for p in (10, 30, 50, 90)}
KEYS = 10_000
REMOTE_KEYS = 300  # OFREP clients ask the server per key: they relay its answer, a sample shows it
BROWSER_KEYS = 30  # the web provider refetches the whole set per context
WATCH = "checkout"

# The README's table, "agrees with OFREP" for every key at 10/30/50/90 %: client -> (generation, agrees).
AGREES_WITH_OFREP = {
    "python in-process (openfeature-provider-flagd 0.6.1, openfeature-flagd-core 2.0.0)": (bucket_cbor, True),
    "js in-process (@openfeature/flagd-provider 0.16.1, @openfeature/flagd-core 4.0.1)": (bucket_concat, False),
    "java in-process (dev.openfeature.contrib.providers:flagd 0.11.15)": (bucket_concat_percent, False),
    "js OFREP (@openfeature/ofrep-provider 0.1.3)": (bucket_cbor, True),
    "java OFREP (dev.openfeature.contrib.providers:ofrep 0.0.2)": (bucket_cbor, True),
    "browser OFREP (@openfeature/ofrep-web-provider 0.4.3, @openfeature/web-sdk 1.10.0)": (bucket_cbor, True),
}


@pytest.fixture(scope="session")
def clients() -> Iterator[None]:
    yield from clients_installed()


@pytest.fixture
def page(tmp_path: Path) -> Iterator[PageServer]:
    server = PageServer(tmp_path / "browser.log")
    yield server
    server.close()


def ofrep_bits(served: Served, namespace: str, count: int) -> dict[str, str]:
    """Every rollout flag's answer from OFREP for the first ``count`` keys (bulk evaluation, 8 at a time)."""
    url = served.ofrep_url(namespace) + "/ofrep/v1/evaluate/flags"

    async def ask_all() -> list[dict[str, bool]]:
        gate = asyncio.Semaphore(8)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            async def ask(i: int) -> dict[str, bool]:
                async with gate, session.post(url, json={"context": {"targetingKey": f"user-{i}"}}) as answer:
                    return {f["key"]: f["value"] for f in (await answer.json())["flags"]}
            return await asyncio.gather(*(ask(i) for i in range(count)))

    answers = asyncio.run(ask_all())
    return {flag: "".join("1" if a[flag] else "0" for a in answers) for flag in ROLLOUTS}


def python_in_process_bits(served: Served, namespace: str) -> dict[str, str]:
    """The Python SDK with flagd's provider in-process, default settings."""
    api.set_provider_and_wait(FlagdProvider(resolver_type=ResolverType.IN_PROCESS, host="127.0.0.1",
                                            port=served.sync_port, selector=namespace), domain="python-sync")
    client = api.get_client("python-sync")
    try:
        return {flag: "".join("1" if client.get_boolean_value(flag, False, EvaluationContext(f"user-{i}")) else "0"
                              for i in range(KEYS)) for flag in ROLLOUTS}
    finally:
        api.shutdown()


def generation_bits(rule: Callable[[str, str, int], bool]) -> dict[str, str]:
    return {flag: "".join("1" if rule(flag, f"user-{i}", p) else "0" for i in range(KEYS))
            for flag, p in ROLLOUTS.items()}


def agreement(bits: dict[str, str], truth: dict[str, str]) -> dict[str, int]:
    """Keys answered differently from ``truth``, per flag (over the keys ``bits`` has)."""
    return {flag: sum(a != b for a, b in zip(bits[flag], truth[flag])) for flag in ROLLOUTS}


def assert_flag_seen_before_and_after(first: dict[str, Any], changed: dict[str, Any], cluster: Cluster) -> None:
    """Before: off (the code default is true), a missing flag is FLAG_NOT_FOUND. After: on, with
    the schedule that changed it (and when) as flag metadata. In every client, through both protocols."""
    for name, report in first.items():
        for protocol, details in report["watch"].items():
            assert (details["value"], details["variant"], details["errorCode"]) == (False, "off", None), (name, protocol)
        for protocol, details in report["missing"].items():
            assert (details["value"], details["errorCode"]) == (True, "FLAG_NOT_FOUND"), (name, protocol, details)
    metadata = {}
    for name, seen in changed.items():
        for protocol, details in seen.items():
            assert (details["value"], details["variant"]) == (True, "on"), (name, protocol)
            metadata[f"{name} {protocol}"] = details["flagMetadata"]
    print("\nflag metadata after the change:", metadata)
    applied_at = parse_time(cluster.status("go-live")["appliedAt"])
    for where, flag_metadata in metadata.items():
        assert flag_metadata["lastAppliedSchedule"] == "go-live", where
        assert parse_time(flag_metadata["lastAppliedAt"]) == applied_at, where


def assert_agreement_table(answered: dict[str, dict[str, str]], truth: dict[str, str]) -> None:
    """OFREP runs flagd's current rule; each client runs the generation its source says; the table holds."""
    assert truth == generation_bits(bucket_cbor)
    table = {}
    for client, (rule, _) in AGREES_WITH_OFREP.items():
        bits = answered[client.split(" (")[0]]
        assert agreement(bits, generation_bits(rule)) == dict.fromkeys(ROLLOUTS, 0), f"{client} runs {rule.__name__}"
        table[client] = agreement(bits, truth)
    print("\nclients answering differently from OFREP, per rollout (keys compared: "
          f"{KEYS} in-process, {REMOTE_KEYS} JS and Java OFREP, {BROWSER_KEYS} browser):")
    for client, differ in table.items():
        print(f"  {client}: {differ}")
    assert {c: not any(d.values()) for c, d in table.items()} == {c: a for c, (_, a) in AGREES_WITH_OFREP.items()}
    js_vs_java = agreement(answered["js in-process"], answered["java in-process"])
    print("js in-process answering differently from java in-process:", js_vs_java)
    assert all(js_vs_java.values()), "the JS and Java in-process providers bucket differently from each other too"


@pytest.mark.long
def test_js_java_and_browser_clients_see_the_flags_agree_as_documented_and_see_a_scheduled_change(
    clients: None, cluster: Cluster, start_operator: Callable[..., OperatorProcess], page: PageServer,
    tmp_path: Path,
) -> None:
    served = serve(start_operator, FLAG_SCHEDULER_CORS_ORIGINS=f'["{page.origin}"]')
    for flag, p in ROLLOUTS.items():
        cluster.flag(flag, enabled=True, rollout=p)
    cluster.flag(WATCH, enabled=False, rollout=100)
    job = {"host": "127.0.0.1", "syncPort": served.sync_port, "ofrepUrl": served.ofrep_url(cluster.ns),
           "namespace": cluster.ns, "rollouts": list(ROLLOUTS), "keys": KEYS, "ofrepKeys": REMOTE_KEYS,
           "watch": WATCH}
    js = js_client(job, tmp_path / "js.log")
    java = java_client(job, tmp_path / "java.log")
    page.open({**job, "ofrepKeys": BROWSER_KEYS, "pollIntervalMs": 1000}, tmp_path / "chromium-profile")
    try:
        started = time.monotonic()
        truth = ofrep_bits(served, cluster.ns, KEYS)
        print(f"\nOFREP answers for {KEYS} keys in {time.monotonic() - started:.1f} s")
        python = python_in_process_bits(served, cluster.ns)
        print(f"Python in-process answers in {time.monotonic() - started:.1f} s")
        first = {name: c.next_report(180, "the first evaluations") for name, c in
                 (("js", js), ("java", java), ("browser", page))}

        cluster.schedule("go-live", WATCH, in_seconds(2), {"enabled": True})
        changed = {name: c.next_report(60, f"{WATCH} turning on")["changed"] for name, c in
                   (("js", js), ("java", java), ("browser", page))}
    finally:
        js.stop()
        java.stop()

    assert_flag_seen_before_and_after(first, changed, cluster)
    answered = {
        "python in-process": python, "js in-process": first["js"]["sync"], "java in-process": first["java"]["sync"],
        "js OFREP": first["js"]["ofrep"], "java OFREP": first["java"]["ofrep"], "browser OFREP": first["browser"]["ofrep"],
    }
    assert_agreement_table(answered, truth)
    print("chromium:", chromium_version())


def test_connected_clients_of_each_runtime_follow_a_server_replaced_under_them_with_default_settings(
    clients: None, cluster: Cluster, start_operator: Callable[..., OperatorProcess], tmp_path: Path,
) -> None:
    """One server stops (a rollout or rebalancing), another takes its port: every sync client moves over.

    The clients run their SDKs' default retry settings; per runtime, the time from the new server
    being ready (and from the old one stopping) to the client seeing the change made meanwhile is
    printed. Before the old server ended its streams UNAVAILABLE (it ended them OK), the JS client
    never reconnected and this test failed waiting for it.
    """
    old = serve(start_operator, log_name="old.log")
    cluster.flag(WATCH, enabled=False, rollout=100)
    job = {"host": "127.0.0.1", "syncPort": old.sync_port, "ofrepUrl": old.ofrep_url(cluster.ns),
           "namespace": cluster.ns, "rollouts": [], "keys": 0, "ofrepKeys": 0, "watch": WATCH}
    runtimes = {"js": js_client(job, tmp_path / "js.log"), "java": java_client(job, tmp_path / "java.log")}  # sync and OFREP
    api.set_provider_and_wait(FlagdProvider(resolver_type=ResolverType.IN_PROCESS, host="127.0.0.1",
                                            port=old.sync_port, selector=cluster.ns), domain="python-sync")
    python = api.get_client("python-sync")
    try:
        for name, client in runtimes.items():
            client.next_report(120, "connected")
        assert python.get_boolean_value(WATCH, True, EvaluationContext("user-1")) is False

        stopped = time.monotonic()
        old.op.stop()
        cluster.custom.patch_namespaced_custom_object(
            "flagscheduler.dev", "v1alpha1", cluster.ns, "featureflags", WATCH, {"spec": {"enabled": True}})
        new = serve(start_operator, sync_port=old.sync_port, ofrep_port=old.ofrep_port, log_name="new.log",
                    scheduler=False)
        ready = time.monotonic()
        python_seen = wait_for(
            lambda: python.get_boolean_value(WATCH, False, EvaluationContext("user-1")) and time.monotonic(),
            timeout=60, interval=0.05, what="the Python client to follow the new server")
        seen = {name: client.next_report(60, "the change through the new server") for name, client in runtimes.items()}
    finally:
        for client in runtimes.values():
            client.stop()
        api.shutdown()
    assert all(report["changed"]["sync"]["value"] is True for report in seen.values())
    seen_at = {"python": python_seen, **{name: r["arrived"] for name, r in seen.items()}}
    print(f"\nhandover (default client settings): new server ready {ready - stopped:.2f} s after the old one"
          " began to stop; change seen, in s after that ready / after the stop:",
          {name: (round(max(at - ready, 0.0), 2), round(at - stopped, 2)) for name, at in seen_at.items()})
    assert new.op.proc is not None and new.op.proc.poll() is None


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
