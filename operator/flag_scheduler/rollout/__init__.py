"""The FlagRollout controller: ramps a flag in steps by creating and owning ordinary FlagSchedules."""
