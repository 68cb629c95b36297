-- Health of a flagscheduler.dev FlagCronSchedule (a recurring window), from its status.
-- A pure function of the object, without the string/os libraries, like the FlagSchedule check.
-- A window is Healthy in or out of its window: being closed is its normal state between edges.
-- Its edges' own outcome shows on the FlagSchedules it creates (with their own health).
local hs = {}
local spec = obj.spec or {}
local status = obj.status or {}
local flag = (spec.flagRef or {}).name or "?"
local generation = (obj.metadata or {}).generation
local observed = status.observedGeneration

local function ready_condition()
  for _, c in ipairs(status.conditions or {}) do
    if c.type == "Ready" then
      return c
    end
  end
  return nil
end

local ready = ready_condition()
if status.phase == nil and ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the flag-scheduler operator to pick up this window"
  return hs
end
if observed ~= nil and generation ~= nil and observed < generation then
  hs.status = "Progressing"
  hs.message = "Spec changed (generation " .. generation .. "); the operator last acted on generation " .. observed
  return hs
end
if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = tostring(ready.reason) .. ": " .. tostring(ready.message)
  return hs
end

local missed = ""
if (status.missedEdges or 0) > 0 then
  missed = " (" .. status.missedEdges .. " edges missed while the operator was away or the window suspended)"
end
if status.phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = "Suspended: no edges are applied to FeatureFlag " .. flag
elseif status.phase == "InWindow" then
  hs.status = "Healthy"
  hs.message = "In window on FeatureFlag " .. flag .. ", closes at " .. tostring(status.nextEdgeAt or "?") .. missed
elseif status.phase == "OutOfWindow" then
  hs.status = "Healthy"
  hs.message = "Out of window on FeatureFlag " .. flag .. ", next edge at " .. tostring(status.nextEdgeAt or "none") .. missed
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(status.phase) .. "; is this health check older than the operator?"
end
return hs
