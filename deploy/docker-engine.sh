#!/usr/bin/env bash
# Runs a command with a Docker engine (`make test-containers`): the one DOCKER_HOST or the default socket
# reaches; otherwise a private dockerd started for the command and stopped after it.
#
#   deploy/docker-engine.sh COMMAND...
#
# The private engine keeps its images and build cache under STATE (default /var/cache/embps/docker), so
# the base image and unchanged layers are reused by the next run on this machine.  Where no engine can
# start (no dockerd, not root, a kernel without the features it needs) it prints SKIPPED and why, and
# exits 0 without running the command.
set -euo pipefail

DOCKER=${DOCKER:-docker}
STATE=${EMBPS_DOCKER_STATE:-/var/cache/embps/docker}

skip() {
    echo "SKIPPED: the container test needs a Docker engine, and none could start here: $1" >&2
    exit 0
}

if "$DOCKER" info >/dev/null 2>&1; then
    echo "docker engine: ${DOCKER_HOST:-the default socket}" >&2
    exec "$@"
fi
command -v dockerd >/dev/null || skip "dockerd is not installed (apt-get install docker.io)"
[ "$(id -u)" -eq 0 ] || skip "no engine is reachable and starting dockerd needs root"

mkdir -p "$STATE/data" "$STATE/exec"
socket="$STATE/docker.sock"
export DOCKER_HOST="unix://$socket"
if [ -s "$STATE/docker.pid" ] && kill -0 "$(cat "$STATE/docker.pid")" 2>/dev/null \
        && "$DOCKER" info >/dev/null 2>&1; then
    echo "docker engine: the private dockerd already running at $socket (left running)" >&2
    exec "$@"
fi

dockerd --data-root "$STATE/data" --exec-root "$STATE/exec" -H "$DOCKER_HOST" --pidfile "$STATE/docker.pid" \
    >"$STATE/dockerd.log" 2>&1 &
engine=$!
stop() {
    kill -TERM "$engine" 2>/dev/null || return 0
    for _ in $(seq 60); do kill -0 "$engine" 2>/dev/null || return 0; sleep 1; done
    kill -KILL "$engine" 2>/dev/null || true
}
trap stop EXIT
for _ in $(seq 60); do
    "$DOCKER" info >/dev/null 2>&1 && break
    kill -0 "$engine" 2>/dev/null || skip "dockerd exited: $(tail -3 "$STATE/dockerd.log" | tr '\n' ' ')"
    sleep 1
done
"$DOCKER" info >/dev/null 2>&1 || skip "dockerd did not answer within 60 s: $(tail -3 "$STATE/dockerd.log" | tr '\n' ' ')"
echo "docker engine: a private dockerd at $socket (data in $STATE/data, stopped afterwards)" >&2
"$@"
