"""The real vgi-rpc client against kit-service with `KIT_TOKEN_TTL=2`:
streams that keep turning outlive the token lifetime, an idle one is refused
with `State token expired` (issue 13, item 5). The wire is unchanged (the
call token is still minted once; the cursor is fresh each turn), so this
checks the Python client needs nothing new. Exits nonzero on any failure.

Usage: python stream_ttl.py URL    (a server started with KIT_TOKEN_TTL=2)
"""

import sys
import time

import pyarrow as pa
from vgi_rpc.conformance._protocol import ConformanceService
from vgi_rpc.http import http_connect
from vgi_rpc.rpc import AnnotatedBatch

url = sys.argv[1]
GAP = 0.7  # seconds between turns; 8 turns take well over the 2 s TTL
failures = []
with http_connect(ConformanceService, url) as proxy:
    started = time.perf_counter()
    rows = 0
    for batch in proxy.produce_n(count=8):
        rows += batch.batch.num_rows
        time.sleep(GAP)
    elapsed = time.perf_counter() - started
    print(f"producer: {rows} rows over {elapsed:.1f}s")
    if rows != 8 or elapsed < 4:
        failures.append(f"producer: {rows} rows over {elapsed:.1f}s")

    session = proxy.exchange_accumulate()
    started = time.perf_counter()
    turns = 0
    while time.perf_counter() - started < 5:
        session.exchange(AnnotatedBatch(batch=pa.RecordBatch.from_pydict({"value": [1.0]})))
        turns += 1
        time.sleep(GAP)
    print(f"exchange: {turns} turns over {time.perf_counter() - started:.1f}s")

    stream = iter(proxy.produce_n(count=5))
    next(stream)
    time.sleep(3.2)
    try:
        next(stream)
        failures.append("an idle stream was not refused after the TTL")
    except Exception as error:  # the client raises RpcError
        print(f"idle stream refused: {error}")
        if "State token expired" not in str(error):
            failures.append(f"idle stream refused with another error: {error}")

if failures:
    sys.exit("stream TTL check failed: " + "; ".join(failures))
print("stream TTL check passed")
