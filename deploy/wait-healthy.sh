#!/usr/bin/env bash
# Waits until every given container is healthy (or, without a health check, running): what `docker compose
# up --wait` does in compose v2, for Debian's docker-compose 1.29 too.
#
#   deploy/wait-healthy.sh TIMEOUT_SECONDS CONTAINER...
#
# Exits 0 once all are; 1 when one turns unhealthy or stops, or at the timeout, showing its last log lines.
set -euo pipefail

DOCKER=${DOCKER:-docker}
timeout=$1
shift
[ $# -gt 0 ] || { echo "wait-healthy: no containers" >&2; exit 1; }
deadline=$((SECONDS + timeout))
state() { "$DOCKER" inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$1"; }
name() { "$DOCKER" inspect -f '{{.Name}}' "$1" | tr -d /; }
fail() {
    echo "wait-healthy: $(name "$1") is $2" >&2
    "$DOCKER" logs --tail 30 "$1" >&2 || true
    exit 1
}
while true; do
    waiting=()
    for container in "$@"; do
        case "$(state "$container")" in
            healthy | running) ;;   # running: no health check (with one, the state is its status)
            starting) waiting+=("$container") ;;
            *) fail "$container" "$(state "$container")" ;;
        esac
    done
    [ ${#waiting[@]} -eq 0 ] && { echo "healthy: $(for c in "$@"; do name "$c"; done | tr '\n' ' ')"; exit 0; }
    [ $SECONDS -lt $deadline ] || fail "${waiting[0]}" "not healthy after ${timeout}s"
    sleep 1
done
