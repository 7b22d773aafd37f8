"""Pure coordinator logic."""
