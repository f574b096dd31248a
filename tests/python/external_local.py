"""End-to-end: the real vgi-rpc client with ClientExternalConfig against
kit-service's local storage backend.

Large results arrive as pointer batches and must be byte-identical; requests
above max_request_bytes go through the upload-URL flow; objects must lie under
the configured prefix. Prints timings. Exits nonzero on any mismatch.

Usage: python external_local.py URL STORAGE_DIR
"""

import hashlib
import os
import sys
import time
from pathlib import Path

from vgi_rpc.conformance._protocol import ConformanceService
from vgi_rpc.external import ClientExternalConfig, FetchConfig
from vgi_rpc.http import http_connect

url, storage_dir = sys.argv[1], Path(sys.argv[2])


def loopback_only(candidate: str) -> None:
    if not candidate.startswith("http://127.0.0.1"):
        raise ValueError(f"refusing non-loopback URL {candidate}")


config = ClientExternalConfig(url_validator=loopback_only, fetch_config=FetchConfig(max_fetch_bytes=512 * 1024 * 1024))
failures = []
with http_connect(ConformanceService, url, external_location=config) as proxy:
    for size in (4 << 20, 64 << 20):
        data = os.urandom(size)
        started = time.perf_counter()
        echoed = proxy.echo_bytes(data=data)
        elapsed = time.perf_counter() - started
        same = hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()
        print(f"echo_bytes {size >> 20} MiB through upload URL and pointer: identical={same} {elapsed:.2f}s")
        if not same:
            failures.append(f"echo_bytes {size}")
    rows = sum(batch.batch.num_rows for batch in proxy.produce_large_batches(rows_per_batch=200_000, batch_count=3))
    print(f"produce_large_batches through pointers: {rows} rows")
    if rows != 600_000:
        failures.append(f"produce_large_batches returned {rows} rows")

objects = [p for p in storage_dir.rglob("*.arrow")]
outside = [p for p in objects if not p.relative_to(storage_dir).as_posix().startswith("vgi-rpc/")]
print(f"{len(objects)} objects stored, {len(outside)} outside the prefix")
if not objects or outside:
    failures.append("objects missing or outside the vgi-rpc/ prefix")
if failures:
    sys.exit("external storage e2e failed: " + "; ".join(failures))
