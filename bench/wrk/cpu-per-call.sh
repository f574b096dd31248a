#!/usr/bin/env bash
# Server CPU per small call under wrk, split into user and system time, with
# context switches per call: kit-bench's echo_string request (written by
# bench/callgrind/drive.py --body: a 302-byte zstd frame) posted by
# `wrk -t1 -cCONNS` on one keep-alive connection each. The server runs under
# `taskset -c SERVER_CPU`, wrk under `taskset -c CLIENT_CPU` (the same CPU
# for both measures a call without the vCPU-to-vCPU wake-up; see
# docs/benchmarks.md, "One connection taken apart"). Reads the server's
# /proc/<pid>/stat, task/*/status and task/*/schedstat before and after.
#
# usage: bench/wrk/cpu-per-call.sh BINARY [CONNS=1] [SECONDS=5]
#   BINARY: kit-service (run as `serve --conformance`, JSON access log on)
#           or the crate peer `vgi-rpc-peer` (run as `--http PORT`)
#   SERVER_CPU (default 1), CLIENT_CPU (default 0), PYTHON (a Python with
#   pyarrow and zstandard; default: the CI venv), REQUEST_CODING (zstd, the
#   default, as the Python client sends; identity: the same stream
#   uncompressed, to see what decoding the request costs). Needs Debian's wrk.
set -euo pipefail
bin=$1
conns=${2:-1}
seconds=${3:-5}
server_cpu=${SERVER_CPU:-1}
client_cpu=${CLIENT_CPU:-0}
here=$(cd "$(dirname "$0")" && pwd)
# free_port, wait_http and the venv's Python ($PY).
source "$here/../../.ci/lib.sh"
python=${PYTHON:-$PY}
command -v wrk >/dev/null || { echo "error: wrk is not installed (apt-get install wrk)" >&2; exit 1; }
out=$(mktemp -d)
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$out"' EXIT
case "${REQUEST_CODING:-zstd}" in
    zstd) "$python" "$here/../callgrind/drive.py" --body "$out/body"
        coding='wrk.headers["content-encoding"] = "zstd"' ;;
    identity) "$python" "$here/../callgrind/drive.py" --raw-body "$out/body"
        coding='' ;;
    *) echo "error: REQUEST_CODING is zstd or identity" >&2; exit 2 ;;
esac
cat > "$out/post.lua" <<LUA
local f = io.open("$out/body", "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["content-type"] = "application/vnd.apache.arrow.stream"
$coding
wrk.headers["accept-encoding"] = "zstd, gzip"
wrk.headers["vgi-accept-max-response-bytes"] = "268435456"
LUA
port=$(free_port)
case "$(basename "$bin")" in
    vgi-rpc-peer*) taskset -c "$server_cpu" "$bin" --http "$port" >/dev/null 2>"$out/server.log" & ;;
    *) KIT_LOG_FORMAT=json RUST_LOG=info taskset -c "$server_cpu" "$bin" serve --conformance \
        --listen "127.0.0.1:$port" >/dev/null 2>"$out/server.log" & ;;
esac
server=$!
wait_http "http://127.0.0.1:$port/health" "$server" 10 || { cat "$out/server.log" >&2; exit 1; }
url="http://127.0.0.1:$port/ConformanceService/echo_string"
taskset -c "$client_cpu" wrk -t1 -c"$conns" -d1s -s "$out/post.lua" "$url" >/dev/null
snapshot() {
    awk '{ print $14, $15 }' "/proc/$server/stat"
    cat /proc/"$server"/task/*/status | awk '/^voluntary_ctxt_switches/ { v += $2 } END { print v }'
}
before=$(snapshot)
report=$(taskset -c "$client_cpu" wrk -t1 -c"$conns" -d"${seconds}s" -s "$out/post.lua" "$url")
after=$(snapshot)
echo "$report" | grep -q "Non-2xx" && { echo "error: answers other than 200:" >&2; echo "$report" >&2; exit 1; }
calls=$(echo "$report" | awk '/requests in/ { print $1 }')
ticks=$(getconf CLK_TCK)
python3 - "$calls" "$ticks" "$before" "$after" "$bin" "$conns" "${REQUEST_CODING:-zstd}" <<'PY'
import sys
calls, ticks = int(sys.argv[1]), int(sys.argv[2])
before, after = sys.argv[3].split(), sys.argv[4].split()
user, system, switches = (float(b) - float(a) for a, b in zip(before, after))
per = lambda t: t / ticks / calls * 1e6
print(f"{sys.argv[5]}, {sys.argv[6]} conn, {sys.argv[7]} request: {calls} calls; "
      f"server CPU per call {per(user + system):.1f} us (user {per(user):.1f}, system {per(system):.1f}), "
      f"{switches / calls:.2f} context switches per call")
PY
