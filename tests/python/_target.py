"""Where the vgi-rpc HTTP server under test lives, read from the environment.

Every fixture in ``conftest.py`` is derived from these values; nothing here
starts a server.  The upstream suites address workers as
``http://127.0.0.1:<port>/<Protocol>/<method>`` in their raw-wire groups, so
a *port* can only be handed out for a loopback URL served at the root.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

#: Base URL of the primary conformance worker (required).
URL_ENV = "VGI_TEST_URL"
#: Route prefix of that worker (``""`` by default).
PREFIX_ENV = "VGI_TEST_PREFIX"

_LOOPBACK = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class Target:
    """One HTTP worker: its base URL and route prefix."""

    url: str
    prefix: str

    def loopback_port(self) -> tuple[int | None, str]:
        """Return ``(port, "")`` when raw-wire groups can address it, else ``(None, reason)``.

        The raw-wire groups build ``http://127.0.0.1:{port}/ConformanceService/...``
        themselves, so they need a loopback host, an explicit port and no prefix.
        """
        parsed = urlparse(self.url)
        if parsed.scheme != "http":
            return None, f"raw-wire groups speak plain http to 127.0.0.1; {self.url!r} is not http://"
        if parsed.hostname not in _LOOPBACK:
            return None, f"raw-wire groups hard-code http://127.0.0.1:<port>; {self.url!r} is not loopback"
        if parsed.port is None:
            return None, f"raw-wire groups need an explicit port; {self.url!r} has none"
        if parsed.path not in ("", "/"):
            return None, f"raw-wire groups address the server root; {self.url!r} carries a path"
        if self.prefix:
            return None, f"raw-wire groups hard-code an empty route prefix; {PREFIX_ENV}={self.prefix!r}"
        return int(parsed.port), ""


def _clean_prefix(prefix: str) -> str:
    prefix = prefix.strip()
    if not prefix:
        return ""
    return "/" + prefix.strip("/")


def primary() -> Target | None:
    """Return the primary worker from ``VGI_TEST_URL``/``VGI_TEST_PREFIX``, or ``None``."""
    url = os.environ.get(URL_ENV, "").strip().rstrip("/")
    if not url:
        return None
    return Target(url=url, prefix=_clean_prefix(os.environ.get(PREFIX_ENV, "")))


def extra(env: str) -> Target | None:
    """Return an auxiliary worker (served at the root) named by *env*, or ``None``."""
    url = os.environ.get(env, "").strip().rstrip("/")
    if not url:
        return None
    return Target(url=url, prefix="")


def extra_path(env: str) -> Path | None:
    """Return a filesystem path named by *env*, or ``None``."""
    value = os.environ.get(env, "").strip()
    return Path(value) if value else None
