#!/usr/bin/env bash
# User-space instructions kit-service executes per small call, counted by
# callgrind: repeatable for the same binary and request whatever else the
# machine is doing (kit-bench's timings are not). The server runs
# `serve --conformance` with the JSON access log on, as in kit-bench; after
# 200 uncounted warm-up calls the counters are zeroed, N calls are made on
# one keep-alive connection (drive.py), and the dump's total is divided by N.
# Kernel work (system calls, TCP) is not counted.
#
# usage: bench/callgrind/instructions.sh KIT_SERVICE_BINARY [N=500]
#   PYTHON: a Python with pyarrow and zstandard (default: the CI venv)
set -euo pipefail
bin=$1
calls=${2:-500}
here=$(cd "$(dirname "$0")" && pwd)
# free_port, wait_http and the venv's Python ($PY).
source "$here/../../.ci/lib.sh"
python=${PYTHON:-$PY}
command -v valgrind >/dev/null || { echo "error: valgrind is not installed" >&2; exit 1; }
port=$(free_port)
out=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$out"' EXIT
KIT_LOG_FORMAT=json RUST_LOG=info valgrind --tool=callgrind --callgrind-out-file="$out/cg.%p" \
    "$bin" serve --conformance --listen "127.0.0.1:$port" >/dev/null 2>"$out/server.log" &
server=$!
wait_http "http://127.0.0.1:$port/health" "$server" 120 || { cat "$out/server.log" >&2; exit 1; }
"$python" "$here/drive.py" "$port" 200
callgrind_control --zero "$server" >/dev/null
"$python" "$here/drive.py" "$port" "$calls"
callgrind_control --dump "$server" >/dev/null
total=$(awk '/^summary:/ { s += $2 } END { print s }' "$out"/cg.*.1)
[ -n "$total" ] && [ "$total" -gt 0 ] || { echo "error: no callgrind dump" >&2; exit 1; }
echo "$bin: $((total / calls)) instructions per call ($calls calls)"
