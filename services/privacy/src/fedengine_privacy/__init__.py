"""Privacy: differential-privacy accounting, noise calibration and mechanisms."""
