"""A flag deleted and created again is a new flag: its forward-only history starts empty, on purpose.

Forward only compares a schedule with the marker on the flag object (identity is the uid). Deleting
the flag deletes that marker and, through the ownerReference, the old flag's schedules; the new
flag of the same name has no history, so a schedule older than the last one that landed on the old
flag applies. README ("Forward only", "Who may do what") says why this is the rule.
"""

from __future__ import annotations

from collections.abc import Callable

from conftest import Kubectl
from operator_harness import Cluster, OperatorProcess, in_seconds, wait_for

SCHEDULE = "flagscheduler.dev/last-applied-schedule"


def test_a_recreated_flag_takes_a_schedule_older_than_the_old_flags_last(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], kubectl: Kubectl
) -> None:
    start_operator()
    cluster.flag("phoenix", enabled=False, rollout=0)
    cluster.schedule("late", "phoenix", in_seconds(1), {"enabled": True, "rolloutPercentage": 50})
    cluster.wait_phase("late", "Applied")
    assert cluster.get_flag("phoenix")["metadata"]["annotations"][SCHEDULE] == "late"

    kubectl("delete", "featureflag", "phoenix", "-n", cluster.ns, "--timeout=20s")
    wait_for(lambda: cluster.schedule_gone("late"),
             timeout=30, what="the old flag's schedule to be garbage-collected")
    cluster.flag("phoenix", enabled=False, rollout=0)
    # Due before "late" was: on the old flag it would have been Superseded.
    cluster.schedule("early", "phoenix", in_seconds(-30), {"rolloutPercentage": 10})
    cluster.wait_phase("early", "Applied")
    flag = cluster.get_flag("phoenix")
    assert flag["spec"] == {"enabled": False, "rolloutPercentage": 10}
    assert flag["metadata"]["annotations"][SCHEDULE] == "early"
