"""Measures `/readyz` latency while two 100 MB `oversized_unary` results are sent.

    python tools/readyz_under_oversized.py PATH/TO/kit-service [zstd|gzip|identity]

Starts `kit-service serve --conformance` on a free loopback port, polls
`/readyz` every 10 ms, makes two concurrent 100 MB calls in the given coding,
prints the calls' time and the probe's max and median latency, then stops the
service. Used for the figure in docs/reliability.md; needs pyarrow (the
vgi-rpc venv has it).
"""

import subprocess
import sys
import threading
import time
import urllib.request

import pyarrow as pa

binary = sys.argv[1]
coding = sys.argv[2] if len(sys.argv) > 2 else "zstd"
service = subprocess.Popen(
    [binary, "serve", "--listen", "127.0.0.1:0", "--conformance"],
    stdout=subprocess.PIPE,
    stderr=subprocess.DEVNULL,
    env={"KIT_LOG_FORMAT": "text", "PATH": "/usr/bin:/bin"},
)
try:
    url = service.stdout.readline().decode().split()[1]
    schema = pa.schema([pa.field("target_bytes", pa.int64(), nullable=False)])
    sink = pa.BufferOutputStream()
    writer = pa.ipc.new_stream(sink, schema)
    writer.write_batch(
        pa.record_batch([pa.array([100_000_000], pa.int64())], schema=schema),
        custom_metadata={
            "vgi_rpc.method": "oversized_unary",
            "vgi_rpc.request_version": "1",
            "vgi_rpc.protocol": "ConformanceService",
            "vgi_rpc.protocol_version": "2.0.0",
        },
    )
    writer.close()
    body = sink.getvalue().to_pybytes()
    latencies, stop = [], threading.Event()

    def probe():
        while not stop.is_set():
            started = time.perf_counter()
            urllib.request.urlopen(url + "/readyz").read()
            latencies.append(time.perf_counter() - started)
            time.sleep(0.01)

    def call():
        headers = {"content-type": "application/vnd.apache.arrow.stream"}
        if coding != "identity":
            headers["accept-encoding"] = coding
        request = urllib.request.Request(url + "/ConformanceService/oversized_unary", data=body, headers=headers)
        with urllib.request.urlopen(request) as response:
            response.read()

    poller = threading.Thread(target=probe)
    poller.start()
    time.sleep(0.2)
    calls = [threading.Thread(target=call) for _ in range(2)]
    started = time.perf_counter()
    for thread in calls:
        thread.start()
    for thread in calls:
        thread.join()
    elapsed = time.perf_counter() - started
    time.sleep(0.1)
    stop.set()
    poller.join()
    latencies.sort()
    print(
        f"2 x 100 MB oversized_unary ({coding}): {elapsed:.2f} s; /readyz max {latencies[-1] * 1000:.1f} ms, "
        f"median {latencies[len(latencies) // 2] * 1000:.1f} ms over {len(latencies)} samples"
    )
finally:
    service.kill()
    service.wait()
