"""Where a trainer that embps does not start (a Bagpipe script on embps.compat.bagpipe) finds its job:
EMBPS_JOB names the job's file (`embps train --external-trainers` sets it), EMBPS_ORACLE the oracle
cacher's host:port, whose GetJob returns the job."""

ENV_JOB = "EMBPS_JOB"
ENV_ORACLE = "EMBPS_ORACLE"
