"""What an Argo CD sync sends, reproduced with kubectl: Git manifests, the two apply modes, and
the target ``RespectIgnoreDifferences=true`` builds from the live object's managedFields.

Argo CD applies with field manager ``argocd-controller``: client-side (``kubectl apply``, the
last-applied annotation) by default, server-side with ``--force-conflicts`` under
``ServerSideApply=true``. With ``ignoreDifferences.managedFieldsManagers`` plus
``RespectIgnoreDifferences=true`` it first replaces, in the Git manifest, every field that a
trusted manager owns on the live object and whose live value differs, by the live value.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import yaml

from conftest import Kubectl

GROUP_VERSION = "flagscheduler.dev/v1alpha1"
ARGOCD_MANAGER = "argocd-controller"
MODES = ("client-side", "server-side")


def _manifest(kind: str, name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    """An object as Argo CD applies it from Git: with its tracking annotation (Application "flags")."""
    tracking_id = f"flags:flagscheduler.dev/{kind}:{namespace}/{name}"
    return {
        "apiVersion": GROUP_VERSION,
        "kind": kind,
        "metadata": {
            "name": name, "namespace": namespace, "annotations": {"argocd.argoproj.io/tracking-id": tracking_id},
        },
        "spec": spec,
    }


def git_flag(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    """A FeatureFlag as committed to Git."""
    return _manifest("FeatureFlag", name, namespace, spec)


def git_schedule(name: str, namespace: str, flag: str, at: str, updates: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """A FlagSchedule as committed to Git; ``spec.cancelled`` only if given."""
    return _manifest("FlagSchedule", name, namespace,
                     {"flagRef": {"name": flag}, "scheduledAt": at, "updates": updates, **spec})


def sync(kubectl: Kubectl, mode: str, *objects: dict[str, Any], force: bool = True) -> Any:
    """Apply manifests the way an Argo CD sync does in ``mode``; returns the finished kubectl run."""
    args = ["apply", "-f", "-", f"--field-manager={ARGOCD_MANAGER}"]
    if mode == "server-side":
        args += ["--server-side", *(["--force-conflicts"] if force else [])]
    return kubectl(*args, input=yaml.safe_dump_all(objects), check=False)


def owned(obj: dict[str, Any], manager: str, subresource: str = "") -> set[tuple[str, ...]]:
    """Paths (tuples of keys) of the leaf fields ``manager`` owns, on the main resource by default."""
    paths: set[tuple[str, ...]] = set()
    for entry in obj["metadata"].get("managedFields", []):
        if entry["manager"] == manager and entry.get("subresource", "") == subresource:
            paths |= set(_leaves(entry.get("fieldsV1", {}), ()))
    return paths


def _leaves(fields: dict[str, Any], prefix: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    for key, sub in fields.items():
        if key == ".":
            continue
        path = (*prefix, key.removeprefix("f:"))
        if sub:
            yield from _leaves(sub, path)
        else:
            yield path


def respect_ignore_differences(git: dict[str, Any], live: dict[str, Any], managers: list[str]) -> dict[str, Any]:
    """The manifest Argo CD applies under RespectIgnoreDifferences for ``managedFieldsManagers``.

    Each field a trusted manager owns on the live object that Git also sets, with a different
    value, takes the live value; everything else is Git's.
    """
    target = copy.deepcopy(git)
    for manager in managers:
        for path in owned(live, manager):
            _copy_if_different(target, live, path)
    return target


def _copy_if_different(target: dict[str, Any], live: dict[str, Any], path: tuple[str, ...]) -> None:
    for key in path[:-1]:
        if not isinstance(target.get(key), dict) or not isinstance(live.get(key), dict):
            return
        target, live = target[key], live[key]
    last = path[-1]
    if last in target and last in live and target[last] != live[last]:
        target[last] = live[last]
