"""The real vgi-rpc Python client against the crate `deploy-kit new acme-rpc`
writes, served by `deploy-kit up local` (`.ci/test-new`). The Protocol class is
the Python side of the generated trait `AcmeRpc`; a schema or version mismatch
fails the call.

Usage: python acme_rpc.py URL
Exits nonzero on any mismatch.
"""

from __future__ import annotations

import sys
from typing import ClassVar, Protocol

from vgi_rpc.http import http_connect


class AcmeRpc(Protocol):
    protocol_name: ClassVar[str] = "acme_rpc.AcmeRpc.v1"
    protocol_version: ClassVar[str] = "1.0.0"

    def add(self, a: int, b: int) -> int: ...
    def greet(self, name: str, title: str | None) -> str: ...


failures: list[str] = []


def check(what: str, got: object, expected: object) -> None:
    print(f"{what}: {got!r}")
    if got != expected:
        failures.append(f"{what}: got {got!r}, expected {expected!r}")


with http_connect(AcmeRpc, sys.argv[1]) as proxy:
    check("add(40, 2)", proxy.add(a=40, b=2), 42)
    check("greet('Ada', None)", proxy.greet(name="Ada", title=None), "hello, Ada")
    check("greet('Ada', 'Dr')", proxy.greet(name="Ada", title="Dr"), "hello, Dr Ada")
    try:
        proxy.add(a=2**62, b=2**62)
        failures.append("add overflowing int64 did not fail")
    except Exception as error:  # the service's ValueError, as the client raises it
        check("add overflow error names the operands", "overflows int64" in str(error), True)

if failures:
    sys.exit("acme-rpc with the Python client failed: " + "; ".join(failures))
print("acme-rpc: every call through the Python client matched")
