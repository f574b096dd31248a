"""Differential test: the same requests to kit-service and to the Python reference server.

    python differential.py REFERENCE_URL KIT_URL

Both servers host ``ConformanceService``. For every unary method the script
builds one request from the method's parameter schema, POSTs the identical
bytes to both, and compares the decoded responses: HTTP status, the error
header, and every batch (schema, rows, application metadata; for an error
batch the error type, code and kind). Stream methods are driven through the
real client on both sides and their outputs compared. Per-process values (request
and server ids, tracebacks, timings) are left out, and so are the byte layout
and compression of the body: what is compared is what a client decodes.

Prints one line per difference and the counts; exits 1 on any difference that
is not listed in ``KNOWN_DIFFERENCES`` (each with its reason).
"""

from __future__ import annotations

import sys
from io import BytesIO
from typing import Any

import httpx2
import pyarrow as pa
from pyarrow import ipc

from vgi_rpc.conformance import ConformanceService
from vgi_rpc.http import http_connect
from vgi_rpc.rpc import RpcError, rpc_methods
from vgi_rpc.rpc._wire import _write_request

PROTOCOL = "ConformanceService"
VERSION = "2.0.0"

#: Metadata that names the process or the moment, not the answer.
VOLATILE_KEYS = {
    b"vgi_rpc.request_id",
    b"vgi_rpc.server_id",
    b"vgi_rpc.log_extra",  # the traceback: file names and frames of each implementation
    b"vgi_rpc.location.fetch_ms",
}

#: Method -> why kit-service answers differently today. Each is open work
#: (found by this test), listed so that CI names it on every run; a method
#: that starts to agree must be taken off (the script fails on a stale entry).
KNOWN_DIFFERENCES: dict[str, str] = {}

#: Methods whose generated arguments would ask for a long or huge call.
ARGUMENTS: dict[str, dict[str, object]] = {
    "sleep_ms": {"ms": 1},
}


def sample(data_type: pa.DataType, name: str) -> object:
    """One plausible value of ``data_type``."""
    if pa.types.is_boolean(data_type):
        return True
    if pa.types.is_integer(data_type):
        return 3
    if pa.types.is_floating(data_type):
        return 1.5
    if pa.types.is_string(data_type) or pa.types.is_large_string(data_type):
        return f"h\u00e9llo-{name}"
    if pa.types.is_binary(data_type) or pa.types.is_large_binary(data_type):
        return b"\x00\x01binary"
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        return [sample(data_type.value_type, name), sample(data_type.value_type, name)]
    if pa.types.is_map(data_type):
        return [(sample(data_type.key_type, name), sample(data_type.item_type, name))]
    if pa.types.is_struct(data_type):
        return {field.name: sample(field.type, field.name) for field in data_type}
    if pa.types.is_dictionary(data_type):
        return sample(data_type.value_type, name)
    if pa.types.is_timestamp(data_type) or pa.types.is_date(data_type) or pa.types.is_time(data_type):
        return 0
    if pa.types.is_decimal(data_type):
        import decimal

        return decimal.Decimal("1.25")
    return None


def request(method: str, params: pa.Schema) -> bytes:
    """One request for ``method`` with sampled (or chosen) arguments."""
    values = ARGUMENTS.get(method) or {field.name: sample(field.type, field.name) for field in params}
    buf = BytesIO()
    _write_request(buf, method, params, values, protocol=PROTOCOL, protocol_version=VERSION)
    return buf.getvalue()


def decoded(response: httpx2.Response) -> dict[str, Any]:
    """What a client decodes from one response."""
    batches: list[dict[str, Any]] = []
    try:
        reader = ipc.open_stream(BytesIO(response.content))
        schema = reader.schema
        while True:
            try:
                batch, metadata = reader.read_next_batch_with_custom_metadata()
            except StopIteration:
                break
            meta = {k: v for k, v in (metadata or {}).items() if k not in VOLATILE_KEYS}
            message = meta.pop(b"vgi_rpc.log_message", b"")
            if meta.get(b"vgi_rpc.log_level") == b"EXCEPTION":
                # The error type is the part a client switches on.
                meta[b"error_type"] = message.split(b":", 1)[0]
            elif message:
                meta[b"vgi_rpc.log_message"] = message
            batches.append({"rows": batch.to_pylist(), "metadata": sorted(meta.items())})
        body: Any = {"schema": schema.to_string(show_schema_metadata=False), "batches": batches}
    except pa.ArrowInvalid:
        body = {"not arrow": response.headers.get("content-type")}
    return {
        "status": response.status_code,
        "error": response.headers.get("x-vgi-rpc-error"),
        "body": body,
    }


def stream(url: str, method: str) -> object:
    """A stream method's output through the real client (or its error type)."""
    with http_connect(ConformanceService, url) as proxy:
        try:
            if method == "produce_n":
                return [b.batch.to_pylist() for b in proxy.produce_n(count=4)]
            if method == "produce_empty":
                return [b.batch.to_pylist() for b in proxy.produce_empty()]
            if method == "produce_error_mid_stream":
                return [b.batch.to_pylist() for b in proxy.produce_error_mid_stream(emit_before_error=2)]
            if method == "produce_with_header":
                session = proxy.produce_with_header(count=2)
                return [repr(session.header), *[b.batch.to_pylist() for b in session]]
            if method == "exchange_scale":
                from vgi_rpc.rpc import AnnotatedBatch

                with proxy.exchange_scale(factor=2.5) as session:
                    return [
                        session.exchange(AnnotatedBatch.from_pydict({"value": [1.0, 2.0]})).batch.to_pylist(),
                        session.exchange(AnnotatedBatch.from_pydict({"value": [-3.0]})).batch.to_pylist(),
                    ]
            if method == "exchange_accumulate":
                from vgi_rpc.rpc import AnnotatedBatch

                with proxy.exchange_accumulate() as session:
                    return [
                        session.exchange(AnnotatedBatch.from_pydict({"value": [1.0, 2.0]})).batch.to_pylist()
                        for _ in range(3)
                    ]
        except RpcError as exc:
            return ("RpcError", exc.error_type)
    raise KeyError(method)


STREAMS = [
    "produce_n",
    "produce_empty",
    "produce_error_mid_stream",
    "produce_with_header",
    "exchange_scale",
    "exchange_accumulate",
]


def main() -> None:
    """Compare every unary method and the listed streams; print and exit."""
    reference, kit = (url.rstrip("/") for url in sys.argv[1:3])
    methods = rpc_methods(ConformanceService)
    same, differ, known, stale = 0, [], [], []
    headers = {"content-type": "application/vnd.apache.arrow.stream", "accept-encoding": "identity"}
    with httpx2.Client(timeout=30.0) as client:
        for name, info in sorted(methods.items()):
            if info.method_type.name != "UNARY":
                continue
            body = request(name, info.params_schema)
            answers = [
                decoded(client.post(f"{url}/{PROTOCOL}/{name}", content=body, headers=headers))
                for url in (reference, kit)
            ]
            if answers[0] == answers[1]:
                same += 1
                if name in KNOWN_DIFFERENCES:
                    stale.append(name)
            elif name in KNOWN_DIFFERENCES:
                known.append(name)
            else:
                differ.append((name, answers))
    for name in STREAMS:
        answers = [stream(url, name) for url in (reference, kit)]
        if answers[0] == answers[1]:
            same += 1
        else:
            differ.append((name, answers))
    for name, (ref, ours) in differ:
        print(f"DIFFERENT {name}:\n  reference: {ref}\n  kit:       {ours}")
    for name in known:
        print(f"known difference {name}: {KNOWN_DIFFERENCES[name]}")
    for name in stale:
        print(f"STALE: {name} now decodes the same; take it off KNOWN_DIFFERENCES")
    print(
        f"differential: {same} calls decode the same, {len(differ)} differ, "
        f"{len(known)} known differences (open work)"
    )
    if differ or stale:
        sys.exit(1)


if __name__ == "__main__":
    main()
