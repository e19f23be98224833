"""Orbax checkpoints of training runs and exports."""
