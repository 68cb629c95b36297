-- Pause: the pending step's schedule is cancelled and its remaining hold kept (status.remainingHold).
local phase = (obj.status or {}).phase or "Pending"
if phase == "Completed" or phase == "Aborted" then
  error("cannot pause FlagRollout " .. obj.metadata.name .. ": it is already " .. phase, 0)
end
obj.spec.paused = true
return obj
