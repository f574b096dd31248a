"""Fixtures that point the upstream vgi-rpc conformance pytest suites at a running HTTP server.

The suites ship in the ``vgi_rpc`` wheel (``vgi_rpc/conformance/_pytest_suite.py``
and the modules it re-exports), but the fixtures they request live in the
upstream repository's ``tests/conftest.py``, which spawns Python workers.  This
conftest supplies the same fixtures for a server that is *already running* and
is named by URL, so the suite can be aimed at any implementation
(``kit-service serve --conformance``, the Python reference, ...).

Environment
-----------
``VGI_TEST_URL``     (required) base URL of a worker hosting ``ConformanceService``
                     (v2.0.0) and ``conformance.Secondary.v1``.
``VGI_TEST_PREFIX``  route prefix of that worker (default ``""``).

Optional auxiliary workers, each a base URL served at the root on 127.0.0.1.
A group whose worker is not given is skipped (or, where upstream makes the
fixture optional, treated exactly as upstream treats a runner that lacks it).
See ``AUX_URL_FIXTURES`` / ``REQUIRED_AUX_FIXTURES`` below and README.md.

Transports
----------
Only ``http`` is offered on the ``conformance_conn`` axis (plus
``http_externalize_always`` when ``VGI_TEST_EXTERNALIZE_ALWAYS_URL`` is set).
pipe / subprocess / unix / shm / raw byte-stream variants cannot be reached
through a URL, so they are never parametrized rather than faked.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import _target

ConnFactory = Callable[..., contextlib.AbstractContextManager[Any]]

_PRIMARY = _target.primary()


# ---------------------------------------------------------------------------
# Session guard
# ---------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to run without a target: every test would otherwise error obscurely."""
    if _PRIMARY is None:
        raise pytest.UsageError(f"set {_target.URL_ENV} to the base URL of the vgi-rpc HTTP server under test")
    config.addinivalue_line("markers", "timeout(seconds): pytest-timeout per-test limit")


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Print the target so a log says what was tested."""
    assert _PRIMARY is not None
    lines = [f"vgi-rpc target: {_PRIMARY.url} (prefix {_PRIMARY.prefix!r})"]
    for env in sorted({*AUX_URL_FIXTURES.values(), *REQUIRED_AUX_FIXTURES.values(), *_AUX_OTHER_ENVS}):
        if os.environ.get(env):
            lines.append(f"  {env}={os.environ[env]}")
    return lines


# ---------------------------------------------------------------------------
# Skips: the one list in conformance.toml (applied by kit_skips)
# ---------------------------------------------------------------------------

pytest_plugins = ["kit_skips"]

#: Fixtures that reach the server under test.  A collected test that requests
#: none of them (and no ``request`` for a dynamic lookup) exercises only the
#: in-process Python library, so it says nothing about the target.
_TARGET_FIXTURES = frozenset(
    {
        "conformance_conn",
        "conformance_raw_conn",
        "conformance_describe",
        "protocol_target",
        "conformance_fake_storage",
        "request",
    }
)


def _touches_target(item: pytest.Item) -> bool:
    names = set(getattr(item, "fixturenames", ()))
    return bool(names & _TARGET_FIXTURES) or any(n.startswith("conformance_http_") for n in names)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a test that never contacts the server unless conformance.toml lists it.

    Such a test passes or fails on the Python library alone; counted as a pass
    it would inflate what kit-service is said to pass.
    """
    import kit_skips

    skips = kit_skips.load()
    unlisted = [
        item.nodeid
        for item in items
        if not _touches_target(item) and kit_skips.listed_reason(kit_skips.qualified_id(item), skips) is None
    ]
    if unlisted:
        raise pytest.UsageError(
            "these tests never contact the server under test; list them as not_applicable in "
            f"tests/python/conformance.toml: {unlisted}"
        )


# ---------------------------------------------------------------------------
# The transport axis
# ---------------------------------------------------------------------------

_EXTERNALIZE_ALWAYS = _target.extra("VGI_TEST_EXTERNALIZE_ALWAYS_URL")
_CONN_PARAMS = ["http"] + (["http_externalize_always"] if _EXTERNALIZE_ALWAYS is not None else [])


@pytest.fixture(params=_CONN_PARAMS)
def conformance_conn(request: pytest.FixtureRequest) -> ConnFactory:
    """Return a factory of ``ConformanceService`` proxies over the real HTTP client.

    ``http``                    -> ``VGI_TEST_URL`` (+ ``VGI_TEST_PREFIX``)
    ``http_externalize_always`` -> ``VGI_TEST_EXTERNALIZE_ALWAYS_URL``: a worker that
                                   externalizes every non-empty batch to loopback storage.
    """
    from vgi_rpc.conformance import ConformanceService
    from vgi_rpc.http import http_connect

    assert _PRIMARY is not None
    variant = str(request.param)

    def factory(on_log: Callable[..., None] | None = None) -> contextlib.AbstractContextManager[Any]:
        if variant == "http_externalize_always":
            from vgi_rpc.external import ExternalLocationConfig

            assert _EXTERNALIZE_ALWAYS is not None
            return http_connect(
                ConformanceService,
                _EXTERNALIZE_ALWAYS.url,
                prefix=_EXTERNALIZE_ALWAYS.prefix,
                on_log=on_log,
                # Fake storage vends http://127.0.0.1 URLs; the default validator is https-only.
                external_location=ExternalLocationConfig(url_validator=None),
            )
        return http_connect(ConformanceService, _PRIMARY.url, prefix=_PRIMARY.prefix, on_log=on_log)

    return factory


@pytest.fixture(scope="session")
def conformance_protocol_connector() -> Callable[..., contextlib.AbstractContextManager[Any]]:
    """Bind a proxy to any protocol hosted by the worker (``conformance.Secondary.v1``, reflection...)."""
    from vgi_rpc.http import http_connect

    assert _PRIMARY is not None

    def connect(transport: str, protocol: type, on_log: Any = None) -> contextlib.AbstractContextManager[Any]:
        if transport == "http_externalize_always":
            from vgi_rpc.external import ExternalLocationConfig

            assert _EXTERNALIZE_ALWAYS is not None
            return http_connect(
                protocol,
                _EXTERNALIZE_ALWAYS.url,
                on_log=on_log,
                external_location=ExternalLocationConfig(url_validator=None),
            )
        return http_connect(protocol, _PRIMARY.url, prefix=_PRIMARY.prefix, on_log=on_log)

    return connect


@pytest.fixture
def conformance_raw_conn() -> ConnFactory:
    """Raw byte-stream connections do not exist over HTTP."""
    pytest.skip("conformance_raw_conn needs a raw byte-stream transport (pipe/unix/tcp); target is HTTP")


# ---------------------------------------------------------------------------
# The primary worker, addressed by port
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def conformance_http_port() -> int:
    """Loopback port of the primary worker, for the raw-wire groups."""
    assert _PRIMARY is not None
    port, reason = _PRIMARY.loopback_port()
    if port is None:
        pytest.skip(reason)
    return port


@pytest.fixture(scope="session")
def conformance_describe() -> Any:
    """``ServiceDescription`` of ``ConformanceService``, read from the worker via reflection.

    ``list_protocols`` then ``describe("ConformanceService")`` over
    ``vgi_rpc.Reflection.v1``, adapted exactly as ``vgi_rpc.introspect`` does.
    A worker that does not host reflection makes the describe group skip.
    """
    from vgi_rpc.conformance._secondary_pytest import PRIMARY_PROTOCOL_NAME
    from vgi_rpc.http import http_connect
    from vgi_rpc.introspect import _adapt_description, _reflection_not_hosted
    from vgi_rpc.rpc import RpcError
    from vgi_rpc.rpc._reflection import Reflection

    assert _PRIMARY is not None
    with http_connect(Reflection, _PRIMARY.url, prefix=_PRIMARY.prefix) as proxy:
        try:
            listing = proxy.list_protocols()
        except RpcError as exc:
            if _reflection_not_hosted(exc):
                pytest.skip(f"server does not host vgi_rpc.Reflection.v1 ({exc.error_type}: {exc.error_message})")
            raise
        hosted = [p.protocol for p in listing.protocols]
        if PRIMARY_PROTOCOL_NAME not in hosted:
            pytest.fail(f"reflection lists {hosted} but not {PRIMARY_PROTOCOL_NAME!r}")
        return _adapt_description(proxy.describe(protocol=PRIMARY_PROTOCOL_NAME), listing)


# ---------------------------------------------------------------------------
# Auxiliary workers
# ---------------------------------------------------------------------------


def _port_of(env: str) -> int | None:
    target = _target.extra(env)
    if target is None:
        return None
    port, reason = target.loopback_port()
    if port is None:
        raise pytest.UsageError(f"{env}: {reason}")
    return port


#: Fixtures the suites request as *parameters*, so they must exist; each skips
#: with the env var to set when its worker is not supplied.
REQUIRED_AUX_FIXTURES: dict[str, str] = {
    "conformance_http_strict_cap_port": "VGI_TEST_STRICT_CAP_URL",
    "conformance_http_externalized_cap_port": "VGI_TEST_EXTERNALIZED_CAP_URL",
    "conformance_http_with_storage_port": "VGI_TEST_STORAGE_URL",
    "conformance_http_with_zstd_storage_port": "VGI_TEST_ZSTD_STORAGE_URL",
    "conformance_http_auth_port": "VGI_TEST_AUTH_URL",
    "conformance_http_external_security_port": "VGI_TEST_EXTERNAL_SECURITY_URL",
}

_REQUIRED_WHY = {
    "conformance_http_strict_cap_port": "a worker with tight max_response_bytes / max_externalized_response_bytes",
    "conformance_http_externalized_cap_port": "a worker with external storage and a max_externalized_response_bytes cap",
    "conformance_http_with_storage_port": "a worker wired to fake storage (externalize threshold ~4 KiB, "
    "max_request_bytes + upload URLs advertised)",
    "conformance_http_with_zstd_storage_port": "the storage worker with zstd compression of externalized batches",
    "conformance_http_auth_port": "a worker whose auth rejects every RPC (health stays open)",
    "conformance_http_external_security_port": "a storage worker whose pointer fetches allow only "
    "http://127.0.0.1 hops, cap encoded bodies at 4 KiB and decoded bodies at 8 KiB",
}


def _make_required(name: str, env: str) -> Any:
    def fixture() -> int:
        port = _port_of(env)
        if port is None:
            pytest.skip(f"needs {_REQUIRED_WHY[name]}; set {env} to its URL")
        return port

    fixture.__name__ = name
    fixture.__doc__ = f"Port of {_REQUIRED_WHY[name]} ({env})."
    return pytest.fixture(scope="session", name=name)(fixture)


for _name, _env in REQUIRED_AUX_FIXTURES.items():
    globals()[f"_fx_{_name}"] = _make_required(_name, _env)


@pytest.fixture(scope="session")
def conformance_fake_storage() -> str:
    """Base URL of the fake-storage service the storage workers upload to."""
    url = _target.extra("VGI_TEST_FAKE_STORAGE_URL")
    if url is None:
        pytest.skip(
            "needs the fake-storage service (vgi_rpc.conformance.fake_storage) the storage worker uses; "
            "set VGI_TEST_FAKE_STORAGE_URL"
        )
    return url.url


#: Fixtures the suites look up with ``request.getfixturevalue`` and treat as
#: optional.  They are *defined only when their env var is set*, so an absent
#: worker reads exactly like upstream's "runner provides no ..." (skip, or
#: fail where upstream says a server advertising the feature must supply it).
AUX_URL_FIXTURES: dict[str, str] = {
    "conformance_http_no_compression_port": "VGI_TEST_NO_COMPRESSION_URL",
    "conformance_http_cors_port": "VGI_TEST_CORS_URL",
    "conformance_http_auth_reason_port": "VGI_TEST_AUTH_REASON_URL",
    "conformance_http_cold_call_cache_port": "VGI_TEST_COLD_CALL_CACHE_URL",
    "conformance_http_small_request_cap_port": "VGI_TEST_SMALL_REQUEST_CAP_URL",
    "conformance_http_serve_start_fail_once_port": "VGI_TEST_SERVE_START_FAIL_ONCE_URL",
    "conformance_http_sticky_short_ttl_port": "VGI_TEST_STICKY_SHORT_TTL_URL",
    "conformance_http_sticky_auth_port": "VGI_TEST_STICKY_AUTH_URL",
    "conformance_http_identity_port": "VGI_TEST_IDENTITY_URL",
    "conformance_http_identity_introspect_only_port": "VGI_TEST_IDENTITY_INTROSPECT_ONLY_URL",
    "conformance_http_grant_port": "VGI_TEST_GRANT_URL",
}

_AUX_OTHER_ENVS = (
    "VGI_TEST_EXTERNALIZE_ALWAYS_URL",
    "VGI_TEST_FAKE_STORAGE_URL",
    "VGI_TEST_ACCESS_LOG",
    "VGI_TEST_STICKY_PEER_URLS",
    "VGI_TEST_RESOURCE_SOAK_URL",
)


def _make_optional(name: str, env: str) -> Any:
    port = _port_of(env)

    def fixture() -> int:
        assert port is not None
        return port

    fixture.__name__ = name
    fixture.__doc__ = f"Port of the auxiliary worker at ${env}."
    return pytest.fixture(scope="session", name=name)(fixture)


for _name, _env in AUX_URL_FIXTURES.items():
    if _port_of(_env) is not None:
        globals()[f"_fx_{_name}"] = _make_optional(_name, _env)


_ACCESS_LOG = _target.extra_path("VGI_TEST_ACCESS_LOG")
if _ACCESS_LOG is not None:

    @pytest.fixture(scope="session")
    def conformance_http_access_log() -> tuple[int, Path]:
        """``(port, path)``: the primary worker and the JSONL access log it appends to."""
        assert _PRIMARY is not None
        port, reason = _PRIMARY.loopback_port()
        if port is None:
            pytest.skip(reason)
        assert _ACCESS_LOG is not None
        return port, _ACCESS_LOG


_STICKY_PEERS = [u.strip() for u in os.environ.get("VGI_TEST_STICKY_PEER_URLS", "").split(",") if u.strip()]
if _STICKY_PEERS:

    @pytest.fixture(scope="session")
    def conformance_http_sticky_peer_ports() -> tuple[int, int]:
        """Two sticky workers sharing one token key (``VGI_TEST_STICKY_PEER_URLS=url_a,url_b``)."""
        if len(_STICKY_PEERS) != 2:
            raise pytest.UsageError("VGI_TEST_STICKY_PEER_URLS must name exactly two URLs")
        ports = []
        for url in _STICKY_PEERS:
            port, reason = _target.Target(url=url.rstrip("/"), prefix="").loopback_port()
            if port is None:
                raise pytest.UsageError(f"VGI_TEST_STICKY_PEER_URLS: {reason}")
            ports.append(port)
        return ports[0], ports[1]


_SOAK = _target.extra("VGI_TEST_RESOURCE_SOAK_URL")
if _SOAK is not None:

    @pytest.fixture
    def conformance_resource_soak_target() -> Any:
        """A dedicated worker (``VGI_TEST_RESOURCE_SOAK_URL``) and its pid (``VGI_TEST_RESOURCE_SOAK_PID``).

        The soak group samples the process between epochs, so the worker must
        serve nothing else, and the pid must be the server's own process.
        """
        from vgi_rpc.conformance import ConformanceService
        from vgi_rpc.conformance._resource_soak_pytest import ResourceSoakTarget
        from vgi_rpc.http import http_connect

        assert _SOAK is not None
        pid = os.environ.get("VGI_TEST_RESOURCE_SOAK_PID", "")
        if not pid.isdigit():
            raise pytest.UsageError("VGI_TEST_RESOURCE_SOAK_URL is set: set VGI_TEST_RESOURCE_SOAK_PID to its pid")
        url, prefix = _SOAK.url, _SOAK.prefix
        return ResourceSoakTarget(
            name="kit-service-http",
            pid=int(pid),
            connect=lambda: http_connect(ConformanceService, url, prefix=prefix),
        )


_PROOF_BINARY = os.environ.get("VGI_TEST_PROOF_WORKER_BIN", "")
if _PROOF_BINARY:

    @pytest.fixture(scope="session")
    def proof_worker_factory() -> Callable[..., contextlib.AbstractContextManager[Any]]:
        """Spawns ``$VGI_TEST_PROOF_WORKER_BIN serve --conformance`` with the config's ``KIT_PROXY_PROOF_*``.

        One process per worker config, stopped when the test leaves the
        context, so replay caches never leak between tests.
        """
        import subprocess

        from vgi_rpc.conformance.proof_harness import ProofWorker, ProofWorkerConfig

        @contextlib.contextmanager
        def factory(config: ProofWorkerConfig) -> Any:
            env = {
                **os.environ,
                "KIT_PROXY_PROOF": config.mode,
                "KIT_PROXY_PROOF_ORIGIN": config.origin_id,
                "KIT_PROXY_PROOF_SECRETS": config.secrets,
                "KIT_PROXY_PROOF_SKEW": str(config.skew_seconds),
                "KIT_PROXY_PROOF_REPLAY_CACHE": "true" if config.replay_cache else "false",
            }
            process = subprocess.Popen(
                [_PROOF_BINARY, "serve", "--conformance", "--listen", "127.0.0.1:0"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                assert process.stdout is not None
                line = process.stdout.readline()
                if not line.startswith("LISTENING "):
                    _, stderr = process.communicate(timeout=10)
                    raise RuntimeError(f"proof worker did not start ({config}): {stderr}")
                port = int(line.split()[1].rsplit(":", 1)[1].split("/")[0])
                yield ProofWorker(port=port, prefix="", config=config)
            finally:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

        return factory
