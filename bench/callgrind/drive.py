"""Makes N `ConformanceService.echo_string("hello")` calls on one keep-alive
connection, with the request of kit-bench's load phases built by pyarrow
(the same schema and four vgi_rpc keys, zstd level 1: a 552-byte stream in a
302-byte frame); exits non-zero on any other status than 200.

usage: python drive.py PORT N [PATH]   (the vgi-rpc venv: pyarrow, zstandard)
       python drive.py --body FILE       writes the request body to FILE
                                         (bench/wrk/cpu-per-call.sh posts it)
       python drive.py --raw-body FILE   the same stream uncompressed (552 bytes,
                                         to be sent without Content-Encoding)
"""

import http.client
import io
import sys

import pyarrow as pa
import zstandard

schema = pa.schema([pa.field("value", pa.utf8(), nullable=False)])
sink = io.BytesIO()
with pa.ipc.new_stream(sink, schema) as writer:
    writer.write_batch(
        pa.record_batch([pa.array(["hello"])], schema=schema),
        custom_metadata={
            "vgi_rpc.method": "echo_string",
            "vgi_rpc.request_version": "1",
            "vgi_rpc.protocol": "ConformanceService",
            "vgi_rpc.protocol_version": "2.0.0",
        },
    )
body = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(sink.getvalue())
if sys.argv[1] in ("--body", "--raw-body"):
    with open(sys.argv[2], "wb") as out:
        out.write(body if sys.argv[1] == "--body" else sink.getvalue())
    sys.exit(0)
port, calls = int(sys.argv[1]), int(sys.argv[2])
path = sys.argv[3] if len(sys.argv) > 3 else "/ConformanceService/echo_string"
headers = {
    "content-type": "application/vnd.apache.arrow.stream",
    "content-encoding": "zstd",
    "accept-encoding": "zstd, gzip",
    "vgi-accept-max-response-bytes": "268435456",
}
connection = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(calls):
    connection.request("POST", path, body=body, headers=headers)
    response = connection.getresponse()
    data = response.read()
    if response.status != 200:
        sys.exit(f"status {response.status}: {data[:200]!r}")
