"""Start a *Python reference* conformance HTTP worker with optional server knobs.

Validation aid only: ``vgi-rpc-conformance --http`` exposes no response/request
caps, upload URLs or compression switches, so this wraps the same library
objects (``ConformanceService`` + ``conformance.Secondary.v1`` +
``make_wsgi_app``) to boot the auxiliary workers the suite's optional groups
need.  It prints ``PORT:<n>`` once listening on 127.0.0.1, like the reference
CLI.  Nothing in ``conftest.py`` depends on it; the Rust server is meant to
offer the same knobs itself.

    python ref_worker.py                                  # plain worker (+ reflection)
    python ref_worker.py --max-response-bytes 65536 --max-externalized-response-bytes 65536 \\
        --fake-storage http://127.0.0.1:PORT              # strict-cap / externalized-cap worker
    python ref_worker.py --fake-storage URL --upload-urls # storage worker (threshold 4 KiB)
    python ref_worker.py --fake-storage URL --upload-urls --zstd
    python ref_worker.py --no-compression
    python ref_worker.py --fake-storage URL --fetch-security  # external-fetch-security worker
    python ref_worker.py --access-log /tmp/access.jsonl
    python ref_worker.py --max-request-bytes 4096         # small request-cap worker
    python ref_worker.py --call-state-cache-entries 0     # cold call-state cache worker
    python ref_worker.py --fake-storage-server            # run vgi_rpc.conformance.fake_storage instead
"""

from __future__ import annotations

import argparse
import socket
import threading


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    """Parse knobs, build the worker, serve until killed."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--prefix", default="", help="route prefix, e.g. /vgi")
    p.add_argument("--fake-storage-server", action="store_true", help="serve fake storage, not a worker")
    p.add_argument("--fake-storage", default=None, metavar="URL")
    p.add_argument("--externalize-threshold", type=int, default=4096)
    p.add_argument("--upload-urls", action="store_true", help="vend upload URLs + advertise max_request_bytes")
    p.add_argument("--max-request-bytes", type=int, default=None)
    p.add_argument("--zstd", action="store_true", help="zstd-compress externalized batches")
    p.add_argument("--max-response-bytes", type=int, default=None)
    p.add_argument("--max-externalized-response-bytes", type=int, default=None)
    p.add_argument("--no-compression", action="store_true")
    p.add_argument("--access-log", default=None, metavar="PATH")
    p.add_argument("--call-state-cache-entries", type=int, default=None, help="0 = cold call-state cache")
    p.add_argument(
        "--fetch-security",
        action="store_true",
        help="external-security worker: fetch caps 4 KiB encoded / 8 KiB decoded, only http://127.0.0.1 URLs",
    )
    args = p.parse_args()

    port = args.port or _free_port()

    if args.fake_storage_server:
        from vgi_rpc.conformance.fake_storage import serve_in_thread

        base_url, _shutdown = serve_in_thread(port=port)
        print(f"PORT:{base_url.rsplit(':', 1)[1].rstrip('/')}", flush=True)
        threading.Event().wait()
        return

    import waitress

    from vgi_rpc.conformance import ConformanceService, ConformanceServiceImpl
    from vgi_rpc.conformance.secondary import conformance_extra_protocols
    from vgi_rpc.external import Compression, ExternalLocationConfig
    from vgi_rpc.http import make_wsgi_app
    from vgi_rpc.rpc import RpcServer

    external_location = None
    backend = None
    if args.fake_storage:
        from vgi_rpc.conformance.fake_storage import FakeStorageBackend

        backend = FakeStorageBackend(args.fake_storage)
        extra: dict[str, object] = {"url_validator": None}
        if args.fetch_security:
            from urllib.parse import urlparse

            from vgi_rpc.external_fetch import FetchConfig

            def loopback_ip_only(url: str) -> None:
                parsed = urlparse(url)
                if parsed.scheme != "http" or parsed.hostname != "127.0.0.1":
                    raise ValueError(f"only http://127.0.0.1 is allowed, got {parsed.scheme}://{parsed.hostname}")

            extra = {
                "url_validator": loopback_ip_only,
                "fetch_config": FetchConfig(max_fetch_bytes=4096, max_decompressed_bytes=8192),
            }
        external_location = ExternalLocationConfig(
            storage=backend,
            externalize_threshold_bytes=args.externalize_threshold,
            compression=Compression() if args.zstd else None,
            **extra,  # type: ignore[arg-type]
        )
    impl = ConformanceServiceImpl(
        external_storage=external_location.storage if external_location is not None else None,
        external_compression=external_location.compression if external_location is not None else None,
    )
    server = RpcServer(
        ConformanceService,
        impl,
        enable_describe=True,
        external_location=external_location,
        extra_protocols=conformance_extra_protocols(),
    )
    if args.access_log:
        from vgi_rpc.rpc import _configure_access_log

        _configure_access_log(
            path=args.access_log,
            max_bytes=0,
            backup_count=0,
            when=None,
            max_record_bytes=1_048_576,
            server_id=server.server_id,
        )

    kwargs: dict[str, object] = {}
    if args.upload_urls and backend is not None:
        kwargs["upload_url_provider"] = backend
        kwargs["max_request_bytes"] = args.max_request_bytes or args.externalize_threshold
        kwargs["max_upload_bytes"] = 64 * 1024 * 1024
    elif args.max_request_bytes is not None:
        kwargs["max_request_bytes"] = args.max_request_bytes
    if args.max_response_bytes is not None:
        kwargs["max_response_bytes"] = args.max_response_bytes
    if args.max_externalized_response_bytes is not None:
        kwargs["max_externalized_response_bytes"] = args.max_externalized_response_bytes
    if args.call_state_cache_entries is not None:
        kwargs["call_state_cache_entries"] = args.call_state_cache_entries
    app = make_wsgi_app(server, prefix=args.prefix, compression_level=None if args.no_compression else 1, **kwargs)  # type: ignore[arg-type]
    wsgi = waitress.create_server(app, host="127.0.0.1", port=port)
    print(f"PORT:{port}", flush=True)
    wsgi.run()


if __name__ == "__main__":
    main()
