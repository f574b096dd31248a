#!/usr/bin/env bash
# Run the upstream vgi-rpc conformance pytest suites against a running HTTP server.
#
#   tests/python/run_pytest_suite.sh http://127.0.0.1:PORT [extra pytest args...]
#
# Stage 1: vgi_rpc.conformance._pytest_suite (and every group it re-exports),
#          fixtures from tests/python/conftest.py.
# Stage 2: vgi_rpc.conformance._hosted_pytest (the hosted-protocols group run by
#          vgi-rpc-test-hosted), expecting ConformanceService,conformance.Secondary.v1.
#          Disable with VGI_SKIP_HOSTED=1.
#
# Environment: VGI_VENV (python venv; default <repo>/.venv if present, else
# /work/cache/venv), VGI_TEST_PREFIX (route prefix, default ""), VGI_TEST_TIMEOUT
# (per-test seconds, default 60), plus the optional VGI_TEST_*_URL auxiliary
# workers described in tests/python/README.md.
# Exit status: 0 only if no test failed or errored in any stage.
set -uo pipefail

if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi

URL="${1%/}"
shift

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

if [[ -n "${VGI_VENV:-}" ]]; then
    VENV="$VGI_VENV"
elif [[ -x "$REPO/.venv/bin/python" ]]; then
    VENV="$REPO/.venv"
else
    VENV="/work/cache/venv"
fi
PY="$VENV/bin/python"
if [[ ! -x "$PY" ]]; then
    echo "error: no python at $PY (set VGI_VENV)" >&2
    exit 2
fi
if ! "$PY" -c 'import vgi_rpc.conformance._pytest_suite, pytest_timeout' 2>/dev/null; then
    echo "error: $VENV lacks vgi-rpc[http] + pytest + pytest-timeout" >&2
    exit 2
fi

TIMEOUT="${VGI_TEST_TIMEOUT:-60}"
export VGI_TEST_URL="$URL"
export VGI_TEST_PREFIX="${VGI_TEST_PREFIX:-}"
export PYTHONDONTWRITEBYTECODE=1

# Fail fast with a clear message when nothing is listening.
if ! "$PY" - "$URL" "$VGI_TEST_PREFIX" <<'EOF'
import sys, httpx2
url, prefix = sys.argv[1], sys.argv[2]
try:
    httpx2.get(f"{url}{prefix}/health", timeout=5.0)
except Exception as exc:  # noqa: BLE001
    sys.exit(f"error: cannot reach {url}: {exc}")
EOF
then
    exit 2
fi

summary() {  # last "N passed, ..." line of a pytest log
    grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|error|deselected)|no tests ran' "$1" | tail -n 1
}

status=0
LOG1="$(mktemp)"
LOG2="$(mktemp)"
trap 'rm -f "$LOG1" "$LOG2"' EXIT

echo "== stage 1: vgi_rpc.conformance._pytest_suite against $URL (prefix '${VGI_TEST_PREFIX}')"
(
    cd "$HERE" &&
        "$PY" -m pytest test_conformance_http.py \
            -p no:cacheprovider --timeout "$TIMEOUT" -q -rfEs "$@"
) 2>&1 | tee "$LOG1"
rc1=${PIPESTATUS[0]}
[[ $rc1 -ne 0 ]] && status=1

rc2=0
if [[ "${VGI_SKIP_HOSTED:-0}" != 1 ]]; then
    echo
    echo "== stage 2: vgi_rpc.conformance._hosted_pytest (hosted protocols) against $URL"
    WORK="$(mktemp -d)"
    (
        cd "$WORK" &&
            PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" \
            VGI_HOSTED_TRANSPORT=http VGI_HOSTED_TARGET="$URL" VGI_HOSTED_PREFIX="$VGI_TEST_PREFIX" \
                VGI_HOSTED_EXPECT="ConformanceService,conformance.Secondary.v1" \
                "$PY" -m pytest --pyargs vgi_rpc.conformance._hosted_pytest \
                -p no:cacheprovider -p kit_skips --rootdir "$WORK" -c /dev/null --timeout "$TIMEOUT" -q -rfEs "$@"
    ) 2>&1 | tee "$LOG2"
    rc2=${PIPESTATUS[0]}
    rmdir "$WORK" 2>/dev/null
    [[ $rc2 -ne 0 ]] && status=1
fi

echo
echo "== summary"
echo "stage 1 (_pytest_suite):  $(summary "$LOG1")  [exit $rc1]"
if [[ "${VGI_SKIP_HOSTED:-0}" != 1 ]]; then
    echo "stage 2 (_hosted_pytest): $(summary "$LOG2")  [exit $rc2]"
fi
exit $status
