"""Pure privacy logic: accountants, calibration and noise mechanisms (no I/O)."""
