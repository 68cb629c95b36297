-- Approve the next step if it requires approval: add its name to spec.approvedSteps (which only grows).
local spec = obj.spec or {}
local status = obj.status or {}
local phase = status.phase or "Pending"
if phase == "Completed" or phase == "Aborted" then
  error("cannot approve a step of FlagRollout " .. obj.metadata.name .. ": it is already " .. phase, 0)
end
local step = (spec.steps or {})[(status.stepsApplied or 0) + 1]
if step == nil or step.requiresApproval ~= true then
  error("the next step of FlagRollout " .. obj.metadata.name .. " does not require approval", 0)
end
local approved = spec.approvedSteps or {}
for _, name in ipairs(approved) do
  if name == step.name then
    error("step " .. step.name .. " of FlagRollout " .. obj.metadata.name .. " is already approved", 0)
  end
end
approved[#approved + 1] = step.name
obj.spec.approvedSteps = approved
return obj
