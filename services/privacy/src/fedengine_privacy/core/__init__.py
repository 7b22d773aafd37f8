"""Pure privacy-service logic: the task and device ledgers over fedprivacy (no I/O)."""
