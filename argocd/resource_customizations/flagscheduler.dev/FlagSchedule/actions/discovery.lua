-- Actions Argo CD offers on a FlagSchedule. cancel sets spec.cancelled; it is enabled only while
-- the schedule can still be cancelled (Pending or Retrying, not already requested): once the
-- schedule is final the API server refuses any change to its spec.
local actions = {}
local phase = (obj.status or {}).phase or "Pending"
local open = phase == "Pending" or phase == "Retrying"
local requested = (obj.spec or {}).cancelled == true
actions["cancel"] = {
  ["displayName"] = "Cancel schedule",
  ["iconClass"] = "fa fa-fw fa-ban",
  ["disabled"] = not open or requested,
}
return actions
