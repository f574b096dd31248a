# Shared helpers for .ci/run and .ci/test. Sourced, not executed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Caches live outside the clone so a fresh clone reuses them; absent, they are built.
CI_CACHE=${KIT_CI_CACHE:-$HOME/.cache/deploy-kit}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CI_CACHE/target}
VGI_RPC_VERSION=0.52.2
VENV=${VGI_VENV:-$CI_CACHE/venv-py313-vgi-$VGI_RPC_VERSION}
PY=$VENV/bin/python
export VGI_VENV=$VENV

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# The Python 3.13 venv with the vgi-rpc client and its conformance suites.
ensure_python() {
    if [ -x "$PY" ] && "$PY" -c "import vgi_rpc, pytest, pytest_timeout" 2>/dev/null \
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
        "vgi-rpc[http,external,s3,conformance]==$VGI_RPC_VERSION" pytest pytest-timeout
}

# Starts kit-service on a free loopback port with extra `VAR=value` settings;
# prints its URL. Every service started is stopped by stop_services.
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
    env ${settings[@]+"${settings[@]}"} "$CARGO_TARGET_DIR/debug/kit-service" serve --listen 127.0.0.1:0 \
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
