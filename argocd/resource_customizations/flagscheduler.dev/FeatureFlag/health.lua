-- Health of a flagscheduler.dev FeatureFlag. A flag is plain desired state with no process of its
-- own: what can go wrong with a change (refused, missed) is reported on its FlagSchedules, and the
-- flag is Healthy, with a message saying what it is set to and which schedule changed it last.
-- One exception: a flag whose spec the flag servers cannot serve (condition InvalidSpec=True, set
-- by the operator; its last valid definition stays served) is Degraded, with the reason.
-- Pure and restricted like FlagSchedule/health.lua: no clock, no string or os library.
local spec = obj.spec or {}
local annotations = (obj.metadata or {}).annotations or {}

for _, condition in ipairs((obj.status or {}).conditions or {}) do
  if condition.type == "InvalidSpec" and condition.status == "True" then
    return {status = "Degraded", message = "InvalidSpec: " .. tostring(condition.message or "")}
  end
end

local message = "Off"
if spec.variants ~= nil then
  local kind = spec.type or "boolean"
  if spec.enabled == true then
    message = "On, " .. kind .. ", default variant " .. tostring(spec.defaultVariant)
    if spec.split ~= nil and #spec.split > 0 then
      message = message .. ", split over " .. #spec.split .. " variants"
    end
    if spec.targeting ~= nil and next(spec.targeting) ~= nil then
      message = message .. ", targeting rule"
    end
  else
    message = "Off, " .. kind .. ": variant " .. tostring(spec.defaultVariant) .. " for everyone"
  end
elseif spec.enabled == true then
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
