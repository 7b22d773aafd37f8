"""Pure registry logic."""
