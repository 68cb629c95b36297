"""The FlagCronSchedule CRD and ``flag_scheduler.cronschedule.model`` say the same thing (same walker as test_crd_models)."""

from __future__ import annotations

import pytest

from flag_scheduler.cronschedule.model import FlagCronScheduleSpec, FlagCronScheduleStatus
from test_crd_models import ALLOWED, Comparison, load_schema

CRON_SCHEMA = load_schema("flagcronschedules.flagscheduler.dev.yaml")

# Deliberate differences: rules the API server enforces on write (the operator only reads objects
# that passed them), and the ones only the operator can check (an expression cronsim refuses, an
# unknown zone) are checked by flag_scheduler.cronschedule.edges.recurrence, reported as Ready=False.
CRON_ALLOWED = {
    **ALLOWED,
    "FlagCronScheduleSpec:x-kubernetes-validations": "CEL: end differs from start; recurrence() checks it too",
    "EdgeSpec.schedule:x-kubernetes-validations": "CEL: no TZ=, 5 fields; recurrence() checks both too",
    "FlagCronScheduleStatus.conditions:x-kubernetes-list-type": "map list keyed by type, merged by the API server",
}


class CronComparison(Comparison):
    def differ(self, key: str, path: str, message: str) -> None:
        if key in CRON_ALLOWED:
            self.allowed_used.add(key)
        else:
            self.mismatches.append(f"{path} ({key}): {message}")


@pytest.mark.parametrize(("prop", "model"), [("spec", FlagCronScheduleSpec), ("status", FlagCronScheduleStatus)])
def test_schema_and_model_agree(prop: str, model: type) -> None:
    comparison = CronComparison()
    comparison.object(CRON_SCHEMA["properties"][prop], model, f".{prop}")
    assert not comparison.mismatches, "schema and model disagree:\n" + "\n".join(comparison.mismatches)


def test_root_has_only_spec_and_status_and_a_name_bound() -> None:
    assert CRON_SCHEMA["properties"].keys() - {"apiVersion", "kind", "metadata"} == {"spec", "status"}
    assert CRON_SCHEMA["x-kubernetes-validations"][0]["rule"] == "size(self.metadata.name) <= 200"
