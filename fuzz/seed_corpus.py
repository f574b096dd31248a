"""Writes the seed corpus of `request_decoding` into fuzz/seeds/request_decoding/.

Each seed is what the target reads: one selector byte (the route is the
byte modulo the number of routes, the content coding its top two bits: 0
none, 1 zstd, 2 gzip), then a well-formed request body, so the fuzzer starts from requests that reach
method dispatch instead of rediscovering Arrow framing. Run with the CI venv
(pyarrow and zstandard come with vgi-rpc):

    $VENV/bin/python fuzz/seed_corpus.py
"""

import gzip
import pathlib

import pyarrow as pa

OUT = pathlib.Path(__file__).parent / "seeds" / "request_decoding"
# Indices into ROUTES in fuzz_targets/request_decoding.rs.
ADD, COUNT_INIT, COUNT_EXCHANGE, ECHO_ALL, EXCHANGE_SCALE, PRODUCE_N, DESCRIBE = range(7)


def selector(route, coding=0):
    """The first byte in coding's range of 64 that picks `route`."""
    return bytes([next(s for s in range(coding * 64, coding * 64 + 64) if s % 7 == route)])


VERSIONS = {"kit.Demo.v1": "1.0.0", "ConformanceService": "2.0.0"}


def request(method, columns, protocol):
    arrays = [pa.array([value], type=kind) for _, kind, value in columns]
    schema = pa.schema([pa.field(name, kind, nullable=False) for name, kind, _ in columns])
    batch = pa.RecordBatch.from_arrays(arrays, schema=schema)
    metadata = {"vgi_rpc.method": method, "vgi_rpc.request_version": "1"}
    metadata["vgi_rpc.protocol"] = protocol
    if protocol in VERSIONS:
        metadata["vgi_rpc.protocol_version"] = VERSIONS[protocol]
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(batch, custom_metadata=metadata)
    return sink.getvalue().to_pybytes()


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    add = request("add", [("a", pa.int64(), 2), ("b", pa.int64(), 3)], "kit.Demo.v1")
    seeds = {
        "add": selector(ADD) + add,
        "add-gzip": selector(ADD, 2) + gzip.compress(add),
        "count-init": selector(COUNT_INIT)
        + request("count", [("n", pa.int64(), 10), ("batch_rows", pa.int64(), 3)], "kit.Demo.v1"),
        "produce-n-init": selector(PRODUCE_N)
        + request("produce_n", [("count", pa.int64(), 3)], "ConformanceService"),
        "exchange-scale-init": selector(EXCHANGE_SCALE)
        + request("exchange_scale", [("factor", pa.float64(), 2.0)], "ConformanceService"),
        "echo-all-types": selector(ECHO_ALL)
        + request("echo_all_types", [("data", pa.binary(), b"\x00\x01")], "ConformanceService"),
        "describe": selector(DESCRIBE)
        + request("describe", [("protocol", pa.utf8(), "kit.Demo.v1")], "vgi_rpc.Reflection.v1"),
    }
    try:
        import zstandard

        seeds["add-zstd"] = selector(ADD, 1) + zstandard.ZstdCompressor().compress(add)
    except ImportError:
        pass
    for name, data in seeds.items():
        (OUT / name).write_bytes(data)
        print(f"{OUT / name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
