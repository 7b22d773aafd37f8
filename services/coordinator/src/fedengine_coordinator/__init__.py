"""Coordinator: task lifecycle, round state machine, device selection, global model versions."""
