-- Resume: the next step is due at now plus the hold that was left when it was paused.
local phase = (obj.status or {}).phase or "Pending"
if phase == "Completed" or phase == "Aborted" then
  error("cannot resume FlagRollout " .. obj.metadata.name .. ": it is already " .. phase, 0)
end
obj.spec.paused = false
return obj
