"""Code every embps service and client shares: wire encoding, cluster config, logging, status codes."""
