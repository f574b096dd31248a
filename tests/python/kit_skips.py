"""The one list of skips (``conformance.toml``) applied to the upstream pytest suites.

A pytest plugin: ``conftest.py`` loads it for the main suite and
``run_pytest_suite.sh`` / ``.ci/test-conformance`` pass ``-p kit_skips`` to the
hosted group. Each test a ``not_applicable`` or ``not_implemented`` entry names
is marked skipped before it runs, with ``"not applicable: <reason>"`` or
``"not implemented: <reason>"``; ``conformance_gate.py`` accepts no other skip.
"""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path
from typing import Any

import pytest

CONFIG = Path(__file__).with_name("conformance.toml")

#: Config section -> the prefix its skip reasons carry.
SECTIONS = {"not_applicable": "not applicable", "not_implemented": "not implemented"}


def load() -> dict[str, Any]:
    """The parsed ``conformance.toml``."""
    return tomllib.loads(CONFIG.read_text(encoding="utf-8"))


def qualified_id(item: pytest.Item) -> str:
    """``module::Class::test[params]``, the module being where upstream defines the class.

    The suite is star-imported into ``test_conformance_http.py``, so the node id
    alone does not say which upstream module a test belongs to.
    """
    cls = getattr(item, "cls", None)
    module = cls.__module__ if cls is not None else getattr(getattr(item, "module", None), "__name__", "")
    return "::".join([module, *item.nodeid.split("::")[1:]])


def listed_reason(qid: str, config: dict[str, Any], key: str = "pytest") -> str | None:
    """The skip reason ``conformance.toml`` gives for ``qid``, if any."""
    for section, prefix in SECTIONS.items():
        for entry in config.get(section, []):
            if any(fnmatch.fnmatchcase(qid, pattern) for pattern in entry.get(key, [])):
                return f"{prefix}: {entry['reason']}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every listed test skipped with its reason."""
    skips = load()
    for item in items:
        reason = listed_reason(qualified_id(item), skips)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
