"""Print the method table of the upstream conformance protocols as type tokens.

Why: kit-service declares ConformanceService and conformance.Secondary.v1 in Rust
with the same type-token grammar the protocol hash uses. This script prints what
the Python package declares, so a test can compare the two and the protocol
hashes can be checked against upstream.

Usage: python tools/conformance_signatures.py  (needs vgi-rpc==0.52.2)
"""

import json

from vgi_rpc.conformance._protocol import ConformanceService
from vgi_rpc.conformance.secondary import Secondary
from vgi_rpc.rpc._protocol_hash import compute_protocol_hash
from vgi_rpc.rpc._type_tokens import type_token
from vgi_rpc.rpc._types import rpc_methods


def schema_text(schema):
    return ", ".join(f"{f.name}{'?' if f.nullable else ''}: {type_token(f.type)}" for f in schema)


def dump(name, protocol):
    methods = rpc_methods(protocol)
    out = {"protocol": name, "hash": compute_protocol_hash(name, methods), "methods": []}
    for method_name, info in sorted(methods.items()):
        out["methods"].append(
            {
                "name": method_name,
                "type": info.method_type.value,
                "params": schema_text(info.params_schema),
                "result": schema_text(info.result_schema) if info.has_return else None,
                "header": schema_text(info.header_type.ARROW_SCHEMA) if info.header_type is not None else None,
            }
        )
    return out


print(json.dumps([dump("ConformanceService", ConformanceService), dump("conformance.Secondary.v1", Secondary)], indent=1))
