-- Health of a flagscheduler.dev FlagSchedule, from its status.phase and conditions.
-- A pure function of the object: no clock (Argo CD re-evaluates health only when the object
-- changes), and no string/os library (Argo CD runs user-supplied checks without them).
-- Why each phase maps as it does: README, "GitOps with Argo CD".
local hs = {}
local spec = obj.spec or {}
local status = obj.status or {}
local flag = (spec.flagRef or {}).name or "?"
local phase = status.phase

-- The Applied condition's message (nil when empty) and reason.
local function applied_condition()
  for _, c in ipairs(status.conditions or {}) do
    if c.type == "Applied" then
      if c.message == "" then
        return nil, c.reason
      end
      return c.message, c.reason
    end
  end
  return nil, nil
end

-- A condition of the given type that is True: its message (or "" if it has none), else nil.
local function true_condition(type_)
  for _, c in ipairs(status.conditions or {}) do
    if c.type == type_ and c.status == "True" then
      return c.message or ""
    end
  end
  return nil
end

local function settled(p)
  return p == "Applied" or p == "Failed" or p == "Cancelled" or p == "Missed" or p == "Superseded"
end

if phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the flag-scheduler operator to pick up this schedule"
  return hs
end

if not settled(phase) then
  local generation = (obj.metadata or {}).generation
  local observed = status.observedGeneration
  -- The outcome is decided but cannot be recorded: the flag refuses every fencing write. One said
  -- for an older generation is stale (the spec moved on, e.g. the cancellation was withdrawn): the
  -- operator says it again for the current generation if an outcome still waits.
  local held = nil
  for _, c in ipairs(status.conditions or {}) do
    if c.type == "FenceRefused" and c.status == "True"
        and (c.observedGeneration == nil or generation == nil or c.observedGeneration >= generation) then
      held = c.message or ""
    end
  end
  if held ~= nil then
    hs.status = "Degraded"
    hs.message = "FenceRefused: " .. held
    return hs
  end
  if spec.cancelled == true then
    hs.status = "Progressing"
    hs.message = "Cancellation requested; waiting for the flag-scheduler operator"
    return hs
  end
  if observed ~= nil and generation ~= nil and observed < generation then
    hs.status = "Progressing"
    hs.message = "Spec changed (generation " .. generation .. "); the operator last acted on generation " .. observed
    return hs
  end
end

local detail, reason = applied_condition()

if phase == "Pending" then
  hs.status = "Healthy"
  hs.message = "Pending: sets FeatureFlag " .. flag .. " at " .. tostring(spec.scheduledAt)
elseif phase == "Retrying" then
  hs.status = "Degraded"
  hs.message = "Attempt " .. tostring(status.retryCount or "?") .. " failed, next retry at " ..
    tostring(status.nextRetryAt or "?") .. ": " .. tostring(status.lastError or detail or "no error recorded")
elseif phase == "Applied" and true_condition("SpecChangedAfterApply") ~= nil then
  -- The spec in Git changed after an earlier generation landed: what Git says never landed.
  hs.status = "Degraded"
  hs.message = "SpecChangedAfterApply: " .. true_condition("SpecChangedAfterApply")
elseif phase == "Applied" then
  hs.status = "Healthy"
  hs.message = "Applied to FeatureFlag " .. flag
  if status.appliedAt ~= nil then
    hs.message = hs.message .. " at " .. status.appliedAt
  end
  local skipped = true_condition("FieldsSuperseded")
  if skipped ~= nil then
    hs.message = hs.message .. "; not set, a later schedule set them: " .. skipped
  end
elseif phase == "Cancelled" then
  hs.status = "Healthy"
  hs.message = "Cancelled; FeatureFlag " .. flag .. " was not changed"
elseif phase == "Superseded" then
  hs.status = "Healthy"
  hs.message = "Superseded: " .. (detail or ("a later schedule already changed FeatureFlag " .. flag .. "; this one was not applied"))
elseif phase == "Missed" then
  hs.status = "Degraded"
  hs.message = "Missed: " .. (detail or ("past its starting deadline; FeatureFlag " .. flag .. " was not changed"))
elseif phase == "Failed" then
  hs.status = "Degraded"
  if reason == "InvalidSpec" then
    hs.message = "Failed (InvalidSpec): " .. (detail or "the operator cannot interpret this schedule")
  else
    local retries = status.retryCount or 0
    local noun = " retries: "
    if retries == 1 then
      noun = " retry: "
    end
    hs.message = "Failed after " .. retries .. noun .. tostring(status.lastError or detail or "no error recorded")
  end
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase) .. "; is this health check older than the operator?"
end
return hs
