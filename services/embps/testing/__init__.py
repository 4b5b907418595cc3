"""What tests and benchmarks use to stand up deployments on one machine (a library, not a service:
nothing else in embps imports it)."""
