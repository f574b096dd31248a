"""Validate kit-service's access log (``KIT_ACCESS_LOG``) against upstream's schema.

    python access_log_check.py [--schema-only] PATH

Every line must be a ``vgi_rpc.access`` record that passes
``vgi_rpc/access_log.schema.json`` (Draft 2020-12, with ``jsonschema``), and
the log a conformance run leaves must show what such a run exercises: unary and
stream calls, failed calls, several protocols, each stream's turns sharing one
``stream_id``. ``--schema-only`` checks the records alone, for a worker whose
run exercises only some of that (the identity worker: unary calls only).
Prints the counts; exits 1 on any violation.
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import jsonschema

from vgi_rpc.access_log_conformance import _load_schema


def main() -> None:
    """Validate the file named on the command line."""
    schema_only = "--schema-only" in sys.argv[1:]
    path = Path([arg for arg in sys.argv[1:] if arg != "--schema-only"][0])
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    validator = jsonschema.Draft202012Validator(_load_schema())
    problems: list[str] = []
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"line {number}: not JSON ({exc})")
            continue
        records.append(record)
        for error in validator.iter_errors(record):
            where = "/".join(str(p) for p in error.absolute_path) or "(record)"
            problems.append(f"line {number} ({record.get('method')}): {where}: {error.message}")
    kinds = Counter((r.get("method_type"), r.get("status")) for r in records)
    protocols = {r.get("protocol") for r in records}
    turns: dict[str, int] = defaultdict(int)
    for record in records:
        if record.get("method_type") == "stream":
            turns[str(record.get("stream_id"))] += 1
    print(
        f"access log: {len(records)} records, {len(problems)} schema violations; "
        f"unary ok/error {kinds[('unary', 'ok')]}/{kinds[('unary', 'error')]}, "
        f"stream ok/error {kinds[('stream', 'ok')]}/{kinds[('stream', 'error')]}, "
        f"{len(turns)} streams ({sum(1 for n in turns.values() if n > 1)} with several turns), "
        f"protocols {sorted(p for p in protocols if p)}"
    )
    for name, ok in (
        ("unary records", kinds[("unary", "ok")] > 0),
        ("failed calls", kinds[("unary", "error")] + kinds[("stream", "error")] > 0),
        ("stream records", kinds[("stream", "ok")] > 0),
        ("a stream with several turns under one stream_id", any(n > 1 for n in turns.values())),
        ("records of more than one protocol", len(protocols) > 1),
    ):
        if not ok and not schema_only:
            problems.append(f"the log has no {name}")
    for problem in problems[:50]:
        print(f"  {problem}", file=sys.stderr)
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
