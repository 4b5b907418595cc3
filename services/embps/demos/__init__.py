"""Runnable demonstrations of embps components (`embps store-demo`, ...)."""
