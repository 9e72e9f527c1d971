#!/usr/bin/env bash
# Stops the local servers that deploy/local/start.sh started, by their recorded
# PIDs (PostgreSQL via `pg_ctl stop -m fast`), waits until each has exited and
# removes its pidfile. Owns only those processes; it never kills by name.
# A zombie (state Z in /proc/PID/stat) counts as exited: this machine's PID 1
# reaps late. Idempotent: a service that is not running is skipped.
#
# Usage: deploy/local/stop.sh [nats] [postgres] [s3] [azurite] [gcs] [gcs-resumable] [bigquery] [moto] [smtp] [stripe]
#        (default: all)
set -euo pipefail

# shellcheck source=deploy/local/lib.sh
. "$(dirname "$0")/lib.sh"

case ${1:-} in
    -h | --help)
        sed -n '2,9s/^# \{0,1\}//p' "$0"
        exit 0
        ;;
esac

services=("$@")
[[ ${#services[@]} -gt 0 ]] || services=(stripe smtp moto bigquery gcs-resumable gcs azurite s3 postgres nats)
validate_services "${services[@]}"

# wait_exit PID COMM TIMEOUT_S: true once PID is gone or a zombie.
wait_exit() {
    local pid=$1 comm=$2 timeout=$3 start
    start=$(now)
    while pid_alive "$pid" "$comm"; do
        if awk -v s="$start" -v n="$(now)" -v t="$timeout" 'BEGIN { exit !(n - s > t) }'; then
            return 1
        fi
        sleep 0.1
    done
}

# stop_by_pid NAME SIGNAL TIMEOUT_S: signal the recorded PID, wait, SIGKILL
# after the timeout.
stop_by_pid() {
    local name=$1 sig=$2 timeout=$3 pid comm t
    comm=$(service_comm "$name")
    if ! pid=$(service_pid "$name"); then
        log "$name: not running"
        rm -f "$(pidfile "$name")"
        return
    fi
    t=$(now)
    kill "-$sig" "$pid" 2>/dev/null || true
    if ! wait_exit "$pid" "$comm" "$timeout"; then
        log "$name: pid $pid still running after ${timeout}s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_exit "$pid" "$comm" 10 || die "$name: pid $pid survived SIGKILL"
    fi
    rm -f "$(pidfile "$name")"
    log "$name: stopped pid $pid in $(elapsed "$t")"
}

stop_nats() { stop_by_pid nats TERM 20; }

stop_s3() { stop_by_pid s3 TERM 30; }

stop_azurite() { stop_by_pid azurite TERM 15; }

stop_gcs() { stop_by_pid gcs TERM 15; }

stop_gcs-resumable() { stop_by_pid gcs-resumable TERM 15; }

stop_bigquery() { stop_by_pid bigquery TERM 20; }

stop_moto() { stop_by_pid moto TERM 15; }
stop_smtp() { stop_by_pid smtp TERM 10; }
stop_stripe() { stop_by_pid stripe TERM 10; }

stop_postgres() {
    local pgdata pid t
    if [[ -f $PIDS/postgres.datadir ]]; then
        pgdata=$(head -n1 "$PIDS/postgres.datadir")
    else
        pgdata=$(pg_base)/data
    fi
    pid=$(service_pid postgres) || pid=""
    # No live recorded PID: still stop a server running on our data dir.
    if [[ -z $pid && -f $pgdata/postmaster.pid ]]; then
        pid=$(head -n1 "$pgdata/postmaster.pid")
        pid_alive "$pid" postgres || pid=""
    fi
    if [[ -z $pid ]]; then
        log "postgres: not running"
        rm -f "$(pidfile postgres)" "$PIDS/postgres.datadir"
        return
    fi
    t=$(now)
    if ! (cd / && as_pg "$PG_BIN/pg_ctl" -D "$pgdata" -m fast -w -t 30 stop >/dev/null 2>&1); then
        # SIGINT is PostgreSQL's fast shutdown.
        kill -INT "$pid" 2>/dev/null || true
    fi
    if ! wait_exit "$pid" postgres 30; then
        log "postgres: pid $pid still running after 30s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_exit "$pid" postgres 10 || die "postgres: pid $pid survived SIGKILL"
    fi
    rm -f "$(pidfile postgres)" "$PIDS/postgres.datadir"
    log "postgres: stopped pid $pid in $(elapsed "$t")"
}

total=$(now)
for s in "${services[@]}"; do
    "stop_$s"
done
log "stopped (${services[*]}) in $(elapsed "$total")"
