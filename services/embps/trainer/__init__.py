"""Trainer processes and the launcher that runs a whole training job on one machine."""
