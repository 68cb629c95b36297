"""The scheduler workload: Lease election, the dispatcher, and every write to flags and schedules."""
