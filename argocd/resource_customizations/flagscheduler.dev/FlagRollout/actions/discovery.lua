-- Actions Argo CD offers on a FlagRollout: each sets a spec field, as a Git commit would.
-- pause/resume flip spec.paused; approve-next adds the next step that requires approval to
-- spec.approvedSteps; abort sets spec.abort (one way). All are disabled once the rollout is final
-- (Completed or Aborted: the API server refuses spec changes), and when they would change nothing.
local actions = {}
local spec = obj.spec or {}
local status = obj.status or {}
local phase = status.phase or "Pending"
local final = phase == "Completed" or phase == "Aborted"

local function next_gated_step()
  local step = (spec.steps or {})[(status.stepsApplied or 0) + 1]
  if step == nil or step.requiresApproval ~= true then
    return nil
  end
  for _, name in ipairs(spec.approvedSteps or {}) do
    if name == step.name then
      return nil
    end
  end
  return step.name
end

actions["pause"] = {["displayName"] = "Pause rollout", ["iconClass"] = "fa fa-fw fa-pause",
  ["disabled"] = final or phase == "Failed" or spec.paused == true}
actions["resume"] = {["displayName"] = "Resume rollout", ["iconClass"] = "fa fa-fw fa-play",
  ["disabled"] = final or spec.paused ~= true}
actions["approve-next"] = {["displayName"] = "Approve next step", ["iconClass"] = "fa fa-fw fa-check",
  ["disabled"] = final or phase == "Failed" or next_gated_step() == nil}
actions["abort"] = {["displayName"] = "Abort rollout", ["iconClass"] = "fa fa-fw fa-stop",
  ["disabled"] = final or spec.abort == true}
return actions
