"""Simulated edge devices that really train: the client side of every protocol."""
