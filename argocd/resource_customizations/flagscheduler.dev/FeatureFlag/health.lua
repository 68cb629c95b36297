-- Health of a flagscheduler.dev FeatureFlag: always Healthy. A flag is plain desired state with no
-- process of its own; what can go wrong (a refused change, a missed deadline) is reported on its
-- FlagSchedules. The message says what the flag is set to and which schedule changed it last.
-- Pure and restricted like FlagSchedule/health.lua: no clock, no string or os library.
local spec = obj.spec or {}
local annotations = (obj.metadata or {}).annotations or {}

local message = "Off"
if spec.enabled == true then
  message = "On, rollout " .. tostring(spec.rolloutPercentage or 100) .. "%"
end

-- The operator records the last change in annotations, in the same request as the change.
local schedule = annotations["flagscheduler.dev/last-applied-schedule"]
if schedule ~= nil then
  message = message .. "; last changed by FlagSchedule " .. schedule
  local at = annotations["flagscheduler.dev/last-applied-at"]
  if at ~= nil then
    message = message .. " at " .. at
  end
else
  message = message .. "; not changed by a schedule yet"
end

return {status = "Healthy", message = message}
