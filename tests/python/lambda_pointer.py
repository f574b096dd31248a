"""The vgi-rpc Python client resolves a pointer that `kit-service lambda`
returned through the fake Lambda Runtime API.

Run by `service/tests/lambda.rs` (feature `s3`, SeaweedFS started by
`.ci/test`): the test decodes the Function URL response of an
`oversized_unary(target_bytes=N)` call, writes its Arrow IPC body to FILE, and
runs

    python lambda_pointer.py FILE N

The body must hold exactly one batch: a zero-row pointer carrying
`vgi_rpc.location` (and its sha256). The client's own
`resolve_external_location` fetches it (loopback only) and checks the sha256;
the resolved batch must be one row of N zero bytes. Exits 0 and prints `ok`
only then.
"""

from __future__ import annotations

import sys

import pyarrow as pa
from vgi_rpc.external import ClientExternalConfig, FetchConfig, resolve_external_location
from vgi_rpc.metadata import LOCATION_KEY, LOCATION_SHA256_KEY


def loopback_only(candidate: str) -> None:
    if not candidate.startswith("http://127.0.0.1"):
        raise ValueError(f"refusing non-loopback URL {candidate}")


def main() -> None:
    path, expected = sys.argv[1], int(sys.argv[2])
    with open(path, "rb") as body:
        reader = pa.ipc.open_stream(body)
        batches = []
        while True:
            try:
                batches.append(reader.read_next_batch_with_custom_metadata())
            except StopIteration:
                break
    if len(batches) != 1:
        sys.exit(f"expected one pointer batch, got {len(batches)} batches")
    batch, metadata = batches[0]
    if batch.num_rows != 0 or metadata is None or LOCATION_KEY not in metadata:
        sys.exit(f"not a pointer batch: {batch.num_rows} rows, metadata {metadata}")
    if LOCATION_SHA256_KEY not in metadata:
        sys.exit("the pointer carries no sha256")
    config = ClientExternalConfig(url_validator=loopback_only, fetch_config=FetchConfig(max_fetch_bytes=64 << 20))
    resolved, _ = resolve_external_location(batch, metadata, config)
    if resolved.num_rows != 1:
        sys.exit(f"the pointer resolved to {resolved.num_rows} rows, expected 1")
    value = resolved.column(0)[0].as_py()
    if len(value) != expected or value.count(0) != expected:
        sys.exit(f"the pointer resolved to {len(value)} bytes ({value.count(0)} zero), expected {expected} zero bytes")
    print(f"ok: resolved {metadata[LOCATION_KEY].decode()[:80]}... to one row of {expected} zero bytes")


if __name__ == "__main__":
    main()
