"""The FlagCronSchedule controller: recurring windows that create one-shot FlagSchedules for their edges."""
