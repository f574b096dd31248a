"""Judge the upstream conformance runs of .ci/test-conformance against conformance.toml.

    python conformance_gate.py --pytest LABEL=junit.xml ... --vgi-rpc-test LABEL=report.json ...

Prints passed, failed and skipped per run (skips split into not applicable and
not implemented), then fails (exit 1) when any test failed or errored, when a
test was skipped for a reason conformance.toml does not give, when a
vgi-rpc-test case passed in none of its runs without being listed, or when a
pass count is below its floor.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import kit_skips

LISTED_PREFIXES = tuple(f"{prefix}:" for prefix in kit_skips.SECTIONS.values())


def labelled(text: str) -> tuple[str, Path]:
    """``LABEL=PATH`` -> (label, path)."""
    label, sep, path = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected LABEL=PATH, got {text!r}")
    return label, Path(path)


def judge_pytest(label: str, path: Path, problems: list[str]) -> int:
    """Counts one JUnit XML report; returns its passes."""
    if not path.exists():
        problems.append(f"pytest [{label}]: no report at {path} (the run did not happen)")
        return 0
    counts: Counter[str] = Counter()
    for case in ET.parse(path).iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None:
            counts["failed"] += 1
            problems.append(f"pytest [{label}]: FAILED {name}")
        elif case.find("error") is not None:
            counts["errors"] += 1
            problems.append(f"pytest [{label}]: ERROR {name}")
        elif (skipped := case.find("skipped")) is not None:
            reason = skipped.get("message", "")
            if reason.startswith("not applicable:"):
                counts["not applicable"] += 1
            elif reason.startswith("not implemented:"):
                counts["not implemented"] += 1
            else:
                counts["unlisted skips"] += 1
                problems.append(f"pytest [{label}]: SKIPPED without a listed reason: {name}: {reason}")
        else:
            counts["passed"] += 1
    print(
        f"pytest [{label}]: {counts['passed']} passed, {counts['failed']} failed, {counts['errors']} errors, "
        f"{counts['not applicable'] + counts['not implemented'] + counts['unlisted skips']} skipped "
        f"({counts['not applicable']} not applicable, {counts['not implemented']} not implemented, "
        f"{counts['unlisted skips']} unlisted)"
    )
    return counts["passed"]


def judge_vgi_rpc_test(runs: list[tuple[str, Path]], config: dict, problems: list[str]) -> int:
    """Counts each vgi-rpc-test run and their union; returns the cases passed in any run."""
    passed: set[str] = set()
    seen: set[str] = set()
    for label, path in runs:
        if not path.exists():
            problems.append(f"vgi-rpc-test [{label}]: no report at {path} (the run did not happen)")
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        print(
            f"vgi-rpc-test [{label}]: {data['passed']} passed, {data['failed']} failed, "
            f"{data['skipped']} skipped (of {data['total']})"
        )
        for result in data["results"]:
            seen.add(result["name"])
            if result["skipped"]:
                continue
            if result["passed"]:
                passed.add(result["name"])
            else:
                problems.append(f"vgi-rpc-test [{label}]: FAILED {result['name']}: {result['error']}")
    never = sorted(seen - passed)
    listed = Counter()
    for name in never:
        reason = kit_skips.listed_reason(name, config, key="vgi_rpc_test")
        if reason is None:
            problems.append(f"vgi-rpc-test: {name} passed in no run and conformance.toml does not list it")
        else:
            listed[reason.split(":", 1)[0]] += 1
    print(
        f"vgi-rpc-test [all runs]: {len(passed)} of {len(seen)} cases passed in at least one run, "
        f"{len(never)} in none ({listed['not applicable']} not applicable, "
        f"{listed['not implemented']} not implemented)"
    )
    return len(passed)


def main() -> None:
    """Parse, judge, print, exit."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pytest", type=labelled, action="append", default=[], metavar="LABEL=JUNIT_XML")
    parser.add_argument("--vgi-rpc-test", type=labelled, action="append", default=[], metavar="LABEL=JSON")
    args = parser.parse_args()

    config = kit_skips.load()
    problems: list[str] = []
    pytest_passed = sum(judge_pytest(label, path, problems) for label, path in args.pytest)
    cases_passed = judge_vgi_rpc_test(args.vgi_rpc_test, config, problems) if args.vgi_rpc_test else 0

    floors = config.get("floor", {})
    for name, count in (("pytest", pytest_passed), ("vgi_rpc_test", cases_passed)):
        floor = int(floors.get(name, 0))
        print(f"floor [{name}]: {count} passed, floor {floor}")
        if count < floor:
            problems.append(f"{name}: {count} passed, below the floor of {floor} in tests/python/conformance.toml")
        elif count > floor:
            print(f"  {name} passes more than its floor: raise it to {count} in tests/python/conformance.toml")

    not_implemented = [entry["reason"] for entry in config.get("not_implemented", [])]
    if not_implemented:
        print("not implemented (open work, skipped in every run):")
        for reason in not_implemented:
            print(f"  - {reason}")
    if problems:
        print(f"conformance gate: {len(problems)} problem(s)", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        sys.exit(1)
    print("conformance gate: passed")


if __name__ == "__main__":
    main()
