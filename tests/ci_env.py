"""What the test environment must provide, and what happens when it does not.

Locally a missing optional tool (a binary, an extra's package) skips the tests that need
it. In CI (the CI variable set to 1, true or yes, in any case) it is a failure instead:
``.ci/run`` installs everything, so a skip there would hide a broken setup.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest

CI_TRUE_VALUES = frozenset({"1", "true", "yes"})


def running_in_ci() -> bool:
    """Whether the CI variable is set to a true value (1, true or yes, in any case)."""
    return os.environ.get("CI", "").strip().lower() in CI_TRUE_VALUES


def missing(message: str) -> NoReturn:
    """Skip with ``message``, or fail in CI (see ``running_in_ci``)."""
    if running_in_ci():
        pytest.fail(f"CI={os.environ['CI']!r} and {message}")
    pytest.skip(
        f"{message}. Skipped because CI={os.environ.get('CI')!r} is not a true value "
        "(with CI=1, true or yes this is a failure)",
        allow_module_level=True,
    )


def require_module(name: str, extra: str) -> ModuleType:
    """Import ``name``, installed by the project's ``extra``: ``pytest.importorskip``, or in
    CI a failure when it is missing.

    Meant for module level (a test module whose every test needs the extra): the skip
    skips the whole module, the failure is a collection error.
    """
    message = f"`{name}` is not installed; pip install 'rh_agents[{extra}]'"
    if not running_in_ci():
        return pytest.importorskip(name, reason=message)
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing(f"{message} ({exc})")
