"""End to end: kit-service with `KIT_STORAGE=s3` on SeaweedFS, driven by the
real vgi-rpc Python client with `ClientExternalConfig`.

Run by `.ci/test` against `kit-service serve --conformance` built with
`--features s3` and started with `KIT_STORAGE=s3`, the SeaweedFS endpoint,
`KIT_URL_ALLOWLIST=http://127.0.0.1` and `KIT_MAX_REQUEST_BYTES=1048576`.

    python external_s3.py SERVICE_URL

Reads `KIT_TEST_S3_ENDPOINT`, `KIT_TEST_S3_BUCKET`, `KIT_TEST_S3_PREFIX`,
`AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (exported by
`start_seaweedfs` in `.ci/lib.sh`). Checks:

- a 4 MiB and a 300 MiB `echo_bytes` come back byte-identical: the request
  exceeds `max_request_bytes`, so it travels by a vended upload URL, and the
  result comes back as a pointer to a pre-signed GET URL;
- every object lies under the configured prefix, nothing outside it;
- an object corrupted in the bucket before the client fetches it, and a
  pointer with a wrong sha256, fail with a checksum error;
- a pre-signed URL with a tampered signature, and an unsigned GET, are refused
  by SeaweedFS (signatures are enforced, so the URLs are what grants access).

Prints timings and ends with `N passed, N failed`.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import boto3
import httpx2
import pyarrow as pa
from botocore.config import Config
from vgi_rpc.conformance._protocol import ConformanceService
from vgi_rpc.external import ClientExternalConfig, FetchConfig, resolve_external_location
from vgi_rpc.http import http_capabilities, http_connect
from vgi_rpc.metadata import LOCATION_KEY, LOCATION_SHA256_KEY

MiB = 1 << 20


def env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        sys.exit(
            f"{name} is not set: start SeaweedFS first (`source .ci/lib.sh && ensure_python && "
            'ensure_seaweedfs && start_seaweedfs "$(mktemp -d)"`), or run `.ci/test`'
        )
    return value


SERVICE_URL = sys.argv[1]
ENDPOINT = env("KIT_TEST_S3_ENDPOINT")
BUCKET = env("KIT_TEST_S3_BUCKET")
PREFIX = env("KIT_TEST_S3_PREFIX")

s3 = boto3.client(
    "s3",
    endpoint_url=ENDPOINT,
    region_name="us-east-1",
    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
)

results: list[tuple[str, bool, str]] = []


def check(name: str, passed: bool, detail: str = "") -> None:
    results.append((name, passed, detail))
    print(f"{'ok  ' if passed else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)


def key_of(url: str) -> str:
    path = urllib.parse.urlsplit(url).path
    prefix = f"/{BUCKET}/"
    if not path.startswith(prefix):
        raise AssertionError(f"{path} is not a path-style URL into bucket {BUCKET}")
    return urllib.parse.unquote(path[len(prefix) :])


class Validator:
    """Allows http://127.0.0.1 only; records every URL; can corrupt the next object it sees."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.times: list[float] = []
        self.corrupt_next = False

    def __call__(self, url: str) -> None:
        if not url.startswith("http://127.0.0.1:"):
            raise ValueError(f"refusing {url}: only http://127.0.0.1 is allowed in this test")
        self.seen.append(url)
        self.times.append(time.monotonic())
        if self.corrupt_next:
            self.corrupt_next = False
            key = key_of(url)
            obj = s3.get_object(Bucket=BUCKET, Key=key)
            body = bytearray(obj["Body"].read())
            body[len(body) // 2] ^= 0xFF
            extra = {"ContentEncoding": obj["ContentEncoding"]} if obj.get("ContentEncoding") else {}
            s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(body), **extra)


def main() -> None:
    try:
        s3.create_bucket(Bucket=BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass

    caps = http_capabilities(SERVICE_URL)
    check(
        "server advertises upload URLs and a 1 MiB request cap",
        bool(caps.upload_url_support) and caps.max_request_bytes == MiB,
        f"upload_url_support={caps.upload_url_support} max_request_bytes={caps.max_request_bytes}",
    )

    validator = Validator()
    config = ClientExternalConfig(
        url_validator=validator,
        fetch_config=FetchConfig(max_fetch_bytes=512 * MiB),
    )
    get_urls: list[str] = []
    # httpx's default 5 s read timeout is shorter than SeaweedFS takes to acknowledge a 300 MiB PUT.
    client = httpx2.Client(base_url=SERVICE_URL, follow_redirects=True, timeout=httpx2.Timeout(120.0))
    with client, http_connect(ConformanceService, client=client, external_location=config) as proxy:
        # A first small call caches the server's capabilities, so oversized
        # requests go straight to an upload URL instead of the 413 fallback
        # (an inline POST refused mid-body; not what this script is about).
        proxy.echo_string(value="warm up")
        for size in (4 * MiB, 300 * MiB):
            data = os.urandom(size)
            before = len(validator.seen)
            started = time.monotonic()
            echoed = proxy.echo_bytes(data=data)
            elapsed = time.monotonic() - started
            urls = validator.seen[before:]
            # The vended upload and download URLs of the request, then the result's GET URL.
            get_urls.extend(urls[1:])
            # Until the result's URL is validated: upload URL, PUT, server fetch + echo + PutObject.
            to_pointer = validator.times[before + 2] - started if len(urls) > 2 else float("nan")
            check(
                f"echo_bytes {size // MiB} MiB byte-identical through S3",
                echoed == data and len(urls) >= 3,
                f"{elapsed:.2f} s ({2 * size / MiB / elapsed:.0f} MiB/s both ways): request up and result stored "
                f"{to_pointer:.2f} s, result fetched and checked {elapsed - to_pointer:.2f} s",
            )
            del data, echoed

        listed = s3.list_objects_v2(Bucket=BUCKET)
        objects = listed.get("Contents", [])
        outside = [o["Key"] for o in objects if not o["Key"].startswith(PREFIX)]
        large = [o for o in objects if o["Size"] >= 300 * MiB]
        check(
            f"objects lie under the prefix `{PREFIX}`",
            not outside and len(objects) >= 4 and len(large) >= 2,
            f"{len(objects)} objects ({', '.join(f'{o["Size"] / MiB:.1f} MiB' for o in objects)}), outside: {outside}",
        )
        check(
            "every URL the client saw points under the prefix",
            all(key_of(u).startswith(PREFIX) for u in validator.seen),
            f"{len(validator.seen)} URLs",
        )

        # Corrupt the result object between upload and fetch: the sha256 check catches it.
        validator.corrupt_next = True
        started = time.monotonic()
        try:
            proxy.oversized_unary(target_bytes=4 * MiB)
            check("corrupted object is refused", False, "the call succeeded")
        except Exception as error:  # the client raises RuntimeError
            message = str(error)
            check(
                "corrupted object is refused",
                "SHA-256 checksum mismatch" in message,
                f"{type(error).__name__}: {message[:160]} ({time.monotonic() - started:.2f} s)",
            )
        payload = proxy.oversized_unary(target_bytes=4 * MiB)
        check(
            "oversized_unary 4 MiB (zero bytes) through S3 after the corruption",
            len(payload) == 4 * MiB and payload.count(0) == len(payload),
            f"{len(payload)} bytes",
        )

    # A pointer whose sha256 does not match the object, resolved by the client's own code.
    url = get_urls[0]
    schema = pa.schema([pa.field("result", pa.binary())])
    pointer = pa.RecordBatch.from_pylist([], schema=schema)
    metadata = pa.KeyValueMetadata({LOCATION_KEY: url.encode(), LOCATION_SHA256_KEY: hashlib.sha256(b"wrong").hexdigest().encode()})
    try:
        resolve_external_location(pointer, metadata, config)
        check("wrong sha256 is refused", False, "resolved")
    except Exception as error:
        check("wrong sha256 is refused", "SHA-256 checksum mismatch" in str(error), f"{type(error).__name__}: {str(error)[:160]}")

    # Signatures are enforced: the untouched URL works, a tampered or missing signature does not.
    def status(target: str) -> tuple[int, bytes]:
        request = urllib.request.Request(target, headers={"Range": "bytes=0-0"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query)
    tampered_query = [(k, ("0" if v[0] != "0" else "1") + v[1:] if k == "X-Amz-Signature" else v) for k, v in query]
    tampered = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(tampered_query)))
    good, _ = status(url)
    bad, body = status(tampered)
    unsigned, _ = status(urllib.parse.urlunsplit(parts._replace(query="")))
    check(
        "tampered signature is refused by SeaweedFS",
        good == 206 and bad == 403 and b"SignatureDoesNotMatch" in body and unsigned == 403,
        f"untouched {good}, tampered {bad}, unsigned {unsigned}",
    )

    config.fetch_config.close()
    passed = sum(1 for _, ok, _ in results if ok)
    failed = len(results) - passed
    print(f"external_s3: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


main()
