"""Deployment tools: compose generation, health probes, resharding."""
