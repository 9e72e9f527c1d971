#!/usr/bin/env bash
# Stops the cluster start.sh started (SIGTERM, so each node flushes its store).
# Usage: deploy/cluster/stop.sh [DATA]   (default .data/cluster)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=${1:-$(cd "$HERE/../.." && pwd)/.data/cluster}
for i in 1 2 3; do
    if [[ -f $DATA/n$i.pid ]]; then
        kill -TERM "$(cat "$DATA/n$i.pid")" 2>/dev/null || true
        rm -f "$DATA/n$i.pid"
    fi
done
