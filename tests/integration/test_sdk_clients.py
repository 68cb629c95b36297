"""Every SDK the README names, for real: JavaScript (server), Java and a browser, beside Python.

One operator serves one namespace; each runtime's client (``tests/clients/<runtime>``, installed
from its registry by ``tests/clients/install.py``) runs once, as a long-lived process: it evaluates
the rollout flags and a three-way split for many targeting keys and the typed flags of
``sdk_typed_flags`` with its SDK's typed methods, reports, then waits until two scheduled changes
(a flag turned on, a number flag's default variant switched) reach it without a restart. The test
then holds every client to what a user must see and to the Python clients, compares it with OFREP
key by key, and checks the README's agreement table (``AGREES_WITH_OFREP``) against the answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext

from operator_harness import GROUP, VERSION, Cluster, OperatorProcess, in_seconds, parse_time, wait_for
from sdk_clients import (
    PageServer,
    Served,
    Split,
    chromium_version,
    clients_installed,
    java_client,
    js_client,
    rollout,
    serve,
    split_cbor,
    split_concat,
    split_concat_percent,
)
from sdk_typed_flags import (
    SPLIT,
    SPLIT_FLAG,
    SPLIT_JOB,
    SWITCH_JOB,
    SWITCHED,
    TYPED,
    assert_typed_flags_as_the_python_clients,
    python_split,
    python_typed,
    typed_flags,
)

ROLLOUTS = {f"rollout-{p}": p for p in (10, 30, 50, 90)}
KEYS = 10_000
REMOTE_KEYS = 300  # OFREP clients ask the server per key: they relay its answer, a sample shows it
BROWSER_KEYS = 30  # the web provider refetches the whole set per context
WATCH = "checkout"

# The README's table, "agrees with OFREP" for every key at 10/30/50/90 % and in the 50/30/20 split:
# client -> (generation, agrees). The Python OFREP client evaluates the split (and typed flags) only.
AGREES_WITH_OFREP = {
    "python in-process (openfeature-provider-flagd 0.6.1, openfeature-flagd-core 2.0.0)": (split_cbor, True),
    "js in-process (@openfeature/flagd-provider 0.16.1, @openfeature/flagd-core 4.0.1)": (split_concat, False),
    "java in-process (dev.openfeature.contrib.providers:flagd 0.11.15)": (split_concat_percent, False),
    "python OFREP (openfeature-provider-ofrep 0.3.0)": (split_cbor, True),
    "js OFREP (@openfeature/ofrep-provider 0.1.3)": (split_cbor, True),
    "java OFREP (dev.openfeature.contrib.providers:ofrep 0.0.2)": (split_cbor, True),
    "browser OFREP (@openfeature/ofrep-web-provider 0.4.3, @openfeature/web-sdk 1.10.0)": (split_cbor, True),
}
RUNTIMES = ("js", "java", "browser")
PROTOCOLS = {"sync": "in-process", "ofrep": "OFREP"}


@pytest.fixture(scope="session")
def clients() -> Iterator[None]:
    yield from clients_installed()


@pytest.fixture
def page(tmp_path: Path) -> Iterator[PageServer]:
    server = PageServer(tmp_path / "browser.log")
    yield server
    server.close()


def ofrep_bits(served: Served, namespace: str, count: int) -> tuple[dict[str, str], list[str | None]]:
    """Every rollout flag's answer and the split's variant from OFREP for the first ``count`` keys
    (bulk evaluation, 8 at a time)."""
    url = served.ofrep_url(namespace) + "/ofrep/v1/evaluate/flags"

    async def ask_all() -> list[dict[str, dict[str, Any]]]:
        gate = asyncio.Semaphore(8)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            async def ask(i: int) -> dict[str, dict[str, Any]]:
                async with gate, session.post(url, json={"context": {"targetingKey": f"user-{i}"}}) as answer:
                    return {f["key"]: f for f in (await answer.json())["flags"]}
            return await asyncio.gather(*(ask(i) for i in range(count)))

    answers = asyncio.run(ask_all())
    bits = {flag: "".join("1" if a[flag]["value"] else "0" for a in answers) for flag in ROLLOUTS}
    return bits, [a[SPLIT_FLAG].get("variant") for a in answers]


def python_clients(served: Served, namespace: str) -> dict[str, Any]:
    """The Python SDK, default settings: in-process (rollouts and split for every key, typed flags)
    and OFREP (split for the first REMOTE_KEYS keys, typed flags)."""
    api.set_provider_and_wait(FlagdProvider(resolver_type=ResolverType.IN_PROCESS, host="127.0.0.1",
                                            port=served.sync_port, selector=namespace), domain="python-sync")
    api.set_provider_and_wait(OFREPProvider(served.ofrep_url(namespace)), domain="python-ofrep")
    sync, ofrep = api.get_client("python-sync"), api.get_client("python-ofrep")
    try:
        bits = {flag: "".join("1" if sync.get_boolean_value(flag, False, EvaluationContext(f"user-{i}")) else "0"
                              for i in range(KEYS)) for flag in ROLLOUTS}
        return {"sync": bits, "split": {"sync": python_split(sync, KEYS), "ofrep": python_split(ofrep, REMOTE_KEYS)},
                "typed": {"sync": python_typed(sync), "ofrep": python_typed(ofrep)}}
    finally:
        api.shutdown()


Generation = Callable[[str, str, Split], str | None]


@cache
def generation_bits(generation: Generation) -> dict[str, str]:
    on = rollout(generation)
    return {flag: "".join("1" if on(flag, f"user-{i}", p) else "0" for i in range(KEYS)) for flag, p in ROLLOUTS.items()}


@cache
def generation_split(generation: Generation) -> list[str | None]:
    return [generation(SPLIT_FLAG, f"user-{i}", SPLIT) for i in range(KEYS)]


def agreement(bits: dict[str, str], truth: dict[str, str]) -> dict[str, int]:
    """Keys answered differently from ``truth``, per flag (over the keys ``bits`` has)."""
    return {flag: sum(a != b for a, b in zip(bits[flag], truth[flag])) for flag in ROLLOUTS}


def assert_flag_seen_before_and_after(first: dict[str, Any], second: dict[str, Any], cluster: Cluster) -> None:
    """Before: off (the code default is true), a missing flag is FLAG_NOT_FOUND. After: on, and the
    number flag on its new default variant, each with the schedule that changed it (and when) as flag
    metadata. In every client, through both protocols."""
    for name, report in first.items():
        for protocol, details in report["watch"].items():
            assert (details["value"], details["variant"], details["errorCode"]) == (False, "off", None), (name, protocol)
        for protocol, details in report["missing"].items():
            assert (details["value"], details["errorCode"]) == (True, "FLAG_NOT_FOUND"), (name, protocol, details)
    metadata: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, seen in second.items():
        for protocol, details in seen["changed"].items():
            assert (details["value"], details["variant"]) == (True, "on"), (name, protocol)
            metadata[f"{name} {protocol} {WATCH}"] = ("go-live", details["flagMetadata"])
        for protocol, details in seen["switched"].items():
            assert (details["value"], details["variant"], details["errorCode"]) == (50, "large", None), (name, protocol)
            metadata[f"{name} {protocol} {SWITCHED}"] = ("switch-page-size", details["flagMetadata"])
    print("\nflag metadata after the changes:", {where: m for where, (_, m) in metadata.items()})
    applied_at = {s: parse_time(cluster.status(s)["appliedAt"]) for s in ("go-live", "switch-page-size")}
    for where, (schedule, flag_metadata) in metadata.items():
        assert flag_metadata["lastAppliedSchedule"] == schedule, where
        assert parse_time(flag_metadata["lastAppliedAt"]) == applied_at[schedule], where


def assert_agreement_table(answered: dict[str, dict[str, str]], truth: dict[str, str],
                           splits: dict[str, list[str | None]], truth_split: list[str | None]) -> None:
    """OFREP runs flagd's current rule; each client runs the generation its source says, in the
    rollouts and the split; the table holds."""
    assert (truth, truth_split) == (generation_bits(split_cbor), generation_split(split_cbor))
    table = {}
    for client, (rule, _) in AGREES_WITH_OFREP.items():
        name = client.split(" (")[0]
        differ = {}
        if name in answered:
            assert agreement(answered[name], generation_bits(rule)) == dict.fromkeys(ROLLOUTS, 0), f"{client} runs {rule.__name__}"
            differ = agreement(answered[name], truth)
        variants = splits[name]
        assert variants == generation_split(rule)[:len(variants)], f"{client} splits by {rule.__name__}"
        differ[SPLIT_FLAG] = sum(a != b for a, b in zip(variants, truth_split))
        table[client] = differ
    print("\nclients answering differently from OFREP, per rollout and in the split (keys compared: "
          f"{KEYS} in-process, {REMOTE_KEYS} Python, JS and Java OFREP, {BROWSER_KEYS} browser):")
    for client, differ in table.items():
        print(f"  {client}: {differ}")
    assert {c: not any(d.values()) for c, d in table.items()} == {c: a for c, (_, a) in AGREES_WITH_OFREP.items()}
    js_vs_java = agreement(answered["js in-process"], answered["java in-process"])
    js_vs_java[SPLIT_FLAG] = sum(a != b for a, b in zip(splits["js in-process"], splits["java in-process"]))
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
    for manifest in typed_flags():
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, cluster.ns, "featureflags", manifest)
    cluster.flag(WATCH, enabled=False, rollout=100)  # last: a client that has it has every flag
    job = {"host": "127.0.0.1", "syncPort": served.sync_port, "ofrepUrl": served.ofrep_url(cluster.ns),
           "namespace": cluster.ns, "rollouts": list(ROLLOUTS), "keys": KEYS, "ofrepKeys": REMOTE_KEYS,
           "watch": WATCH, "typed": TYPED, "split": SPLIT_JOB, "switch": SWITCH_JOB}
    launched = time.monotonic()
    js = js_client(job, tmp_path / "js.log")
    java = java_client(job, tmp_path / "java.log")
    page.open({**job, "ofrepKeys": BROWSER_KEYS, "pollIntervalMs": 1000}, tmp_path / "chromium-profile")
    try:
        wait_for(lambda: requests.post(f"{served.ofrep_url(cluster.ns)}/ofrep/v1/evaluate/flags/{WATCH}",
                                       json={}, timeout=5).status_code == 200, what="OFREP to serve the flags")
        started = time.monotonic()
        truth, truth_split = ofrep_bits(served, cluster.ns, KEYS)
        print(f"\nOFREP answers for {KEYS} keys in {time.monotonic() - started:.1f} s")
        python = python_clients(served, cluster.ns)
        print(f"Python in-process and OFREP answers in {time.monotonic() - started:.1f} s")
        first = {name: c.next_report(180, "the first evaluations") for name, c in zip(RUNTIMES, (js, java, page))}
        print("first reports, s after launch:", {n: round(r["arrived"] - launched, 1) for n, r in first.items()})

        at = in_seconds(2)  # both land together: the wait for one covers the other
        cluster.schedule("go-live", WATCH, at, {"enabled": True})
        cluster.schedule("switch-page-size", SWITCHED, at, {"defaultVariant": SWITCH_JOB["variant"]})
        second = {name: c.next_report(60, f"{WATCH} on and {SWITCHED} switched")
                  for name, c in zip(RUNTIMES, (js, java, page))}
    finally:
        js.stop()
        java.stop()

    assert_flag_seen_before_and_after(first, second, cluster)
    answered = {
        "python in-process": python["sync"], "js in-process": first["js"]["sync"], "java in-process": first["java"]["sync"],
        "js OFREP": first["js"]["ofrep"], "java OFREP": first["java"]["ofrep"], "browser OFREP": first["browser"]["ofrep"],
    }
    reports = {"python": python, **first}
    typed, splits = ({f"{name} {PROTOCOLS[protocol]}": report[part][protocol]
                      for name, report in reports.items() for protocol in report["typed"]} for part in ("typed", "split"))
    assert_typed_flags_as_the_python_clients(typed, splits, truth_split)
    assert_agreement_table(answered, truth, splits, truth_split)
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
