-- Abort (one way): the pending step is cancelled; with onAbort RestoreBaseline the flag gets back
-- the values it had when the rollout started.
local phase = (obj.status or {}).phase or "Pending"
if phase == "Completed" or phase == "Aborted" then
  error("cannot abort FlagRollout " .. obj.metadata.name .. ": it is already " .. phase, 0)
end
obj.spec.abort = true
return obj
