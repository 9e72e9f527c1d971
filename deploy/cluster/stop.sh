#!/usr/bin/env bash
# Stops the three nats-server nodes deploy/cluster/start.sh started (SIGTERM, then
# waits; SIGKILL after 10 s). Leaves their stores, so a restart keeps the streams.
# Usage: deploy/cluster/stop.sh [CLUSTER_DIR]   (default .data/cluster)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=deploy/local/lib.sh
. "$HERE/../local/lib.sh"
CLUSTER_DIR=${1:-$DATA/cluster}
for n in 1 2 3; do
    pidf=$CLUSTER_DIR/n$n.pid
    [[ -f $pidf ]] || continue
    pid=$(cat "$pidf")
    if pid_alive "$pid" nats-server; then
        kill -TERM "$pid"
        for _ in $(seq 100); do pid_alive "$pid" nats-server || break; sleep 0.1; done
        pid_alive "$pid" nats-server && kill -KILL "$pid"
    fi
    rm -f "$pidf"
done
log "NATS cluster stopped"
