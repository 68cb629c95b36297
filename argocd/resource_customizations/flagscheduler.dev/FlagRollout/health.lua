-- Health of a flagscheduler.dev FlagRollout, from its status.phase, waitingFor and conditions.
-- A pure function of the object (no clock, no string/os library, as Argo CD runs it).
-- Paused and AwaitingApproval are Suspended (a person or a Git commit must act); an abort the spec
-- asked for is Healthy (the rollout did what it was told); Failed is Degraded.
local hs = {}
local spec = obj.spec or {}
local status = obj.status or {}
local flag = (spec.flagRef or {}).name or "?"
local phase = status.phase

-- The message of the condition of this type, or nil.
local function condition(type_)
  for _, c in ipairs(status.conditions or {}) do
    if c.type == type_ and c.status == "True" and c.message ~= "" then
      return c.message
    end
  end
  return nil
end

local step = status.currentStep or "0"
local final = phase == "Completed" or phase == "Aborted" or phase == "Failed"
if phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the flag-scheduler operator to pick up this rollout"
  return hs
end
local generation = (obj.metadata or {}).generation
local observed = status.observedGeneration
if not final and observed ~= nil and generation ~= nil and observed < generation then
  hs.status = "Progressing"
  hs.message = "Spec changed (generation " .. generation .. "); the operator last acted on generation " .. observed
  return hs
end

if phase == "Pending" or phase == "Progressing" then
  hs.status = "Progressing"
  hs.message = "Step " .. step .. " of FeatureFlag " .. flag .. "; waiting for " .. tostring(status.waitingFor or "the operator")
elseif phase == "Paused" then
  hs.status = "Suspended"
  local drift = condition("FlagDrifted")
  if drift ~= nil then
    hs.message = "Paused (FlagDrifted): " .. drift
  else
    hs.message = "Paused at step " .. step .. " by spec.paused; hold left: " .. tostring(status.remainingHold or "?")
  end
elseif phase == "AwaitingApproval" then
  hs.status = "Suspended"
  hs.message = "Step " .. step .. " done; waiting for " .. tostring(status.waitingFor or "an approval")
elseif phase == "Completed" then
  hs.status = "Healthy"
  hs.message = "Completed: all steps applied to FeatureFlag " .. flag
elseif phase == "Aborted" then
  hs.status = "Healthy"
  hs.message = "Aborted by spec.abort at step " .. step
  if status.restore ~= nil then
    hs.message = hs.message .. "; FlagSchedule " .. tostring(status.restore.schedule) .. " restores the baseline (" ..
      tostring(status.restore.phase or "Pending") .. ")"
  end
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = "Failed: " .. tostring(status.lastError or condition("Failed") or "no error recorded")
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase) .. "; is this health check older than the operator?"
end
return hs
