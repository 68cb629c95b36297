-- Cancel a schedule that has not run: set spec.cancelled; the operator then marks it Cancelled
-- and leaves the flag alone. Refused (with the reason shown in Argo CD) once the schedule is final.
local phase = (obj.status or {}).phase or "Pending"
if phase ~= "Pending" and phase ~= "Retrying" then
  error("cannot cancel FlagSchedule " .. obj.metadata.name .. ": it is already " .. phase, 0)
end
obj.spec.cancelled = true
return obj
