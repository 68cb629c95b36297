"""The operator's ServiceAccount may do exactly what tests/integration/expected/ lists, nothing more.

``kubectl auth can-i --list`` as the shipped ServiceAccount (manifests/default applied), in a
namespace it watches and in its own. A new rule in the manifests changes the list and fails here
until the expectation is updated on purpose. The tests' own Role (conftest.TEST_LEASE_ROLE: get and
update on any Lease name in the operator's namespace, so parallel tests elect apart) is taken out
of the one row it changes: kubectl merges it with the shipped ``create`` on Leases.
"""

from __future__ import annotations

import contextlib

from pathlib import Path

import pytest

from conftest import Kubectl
from operator_harness import wait_for

from .conftest import FLAG_SERVER_SERVICE_ACCOUNT, OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT

EXPECTED = Path(__file__).parent / "expected"
ACCOUNT = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SERVICE_ACCOUNT}"
# The row as the tests' own Lease Role leaves it in the operator's namespace, and as shipped.
WITH_TESTS_OWN = ("leases.coordination.k8s.io", "[]", "[]", "[create get update]")
SHIPPED = ("leases.coordination.k8s.io", "[]", "[]", "[create]")


def can_i_list(kubectl: Kubectl, namespace: str, account: str = ACCOUNT) -> list[tuple[str, ...]]:
    """The rows of ``kubectl auth can-i --list`` (resource, non-resource URLs, names, verbs), sorted."""
    out = kubectl("auth", "can-i", "--list", "-n", namespace, f"--as={account}").stdout
    rows = []
    for line in out.splitlines()[1:]:
        resource, rest = line.split(maxsplit=1) if not line.startswith(" ") else ("", line)
        rows.append((resource, *_columns(rest)))
    return sorted(rows)


def _columns(rest: str) -> tuple[str, str, str]:
    """Split ``[urls]   [names]   [verbs]`` (each bracketed, possibly holding spaces)."""
    parts, depth, current = [], 0, ""
    for char in rest.strip():
        if char == "[":
            depth += 1
        if depth:
            current += char
        if char == "]":
            depth -= 1
            if not depth:
                parts.append(current)
                current = ""
    assert len(parts) == 3, rest
    return parts[0], parts[1], parts[2]


def expected(name: str) -> list[tuple[str, ...]]:
    return sorted(tuple(line.split("\t")) for line in (EXPECTED / name).read_text().splitlines()
                  if line and not line.startswith("#"))


@pytest.mark.parametrize("where", ["watched-namespace", "operator-namespace"])
def test_the_operator_may_do_only_what_is_listed(
    kubectl: Kubectl, namespace: str, operator_manifests: None, where: str
) -> None:
    def rows() -> list[tuple[str, ...]]:
        found = can_i_list(kubectl, namespace if where == "watched-namespace" else OPERATOR_NAMESPACE)
        if where == "operator-namespace":
            # The tests' own Lease names widen the shipped Lease row; no other row may differ. (No
            # assert here: while the RBAC cache lags, the row is missing and the wait goes on.)
            # kubectl lists a row's verbs in no fixed order ("[get update create]" was seen).
            found = sorted(SHIPPED if row[:3] == WITH_TESTS_OWN[:3] and sorted(row[3].strip("[]").split())
                           == sorted(WITH_TESTS_OWN[3].strip("[]").split()) else row for row in found)
        return found

    want = expected(f"operator-can-i-{where}.tsv")
    # The RBAC authorizer's cache lags a moment behind bindings this run's first apply just wrote.
    with contextlib.suppress(AssertionError):
        wait_for(lambda: rows() == want, 15, interval=0.5, what="the shipped rights to be in force")
    assert rows() == want


@pytest.mark.parametrize("where", ["watched-namespace", "operator-namespace"])
def test_the_flag_server_may_only_read_flags(
    kubectl: Kubectl, namespace: str, operator_manifests: None, where: str
) -> None:
    account = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{FLAG_SERVER_SERVICE_ACCOUNT}"
    ns = namespace if where == "watched-namespace" else OPERATOR_NAMESPACE
    want = expected("flag-server-can-i.tsv")
    # The RBAC authorizer's cache lags a moment behind bindings this run's first apply just wrote.
    with contextlib.suppress(AssertionError):
        wait_for(lambda: can_i_list(kubectl, ns, account) == want, 15, interval=0.5, what="the shipped rights")
    assert can_i_list(kubectl, ns, account) == want
