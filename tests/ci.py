"""The one place that decides whether the tests run in CI.

Outside CI a test that cannot run here (no root, no Xvfb, no Janus...) is skipped; in CI
(``CI`` set to anything but ``""``, ``0``, ``false`` or ``no``, as ``.ci/run`` and the
usual CI services set it) the same missing requirement is a failure, because CI installs
everything and must run every test.
"""

from __future__ import annotations

import os

import pytest

FALSE_VALUES = ("", "0", "false", "no")


def in_ci() -> bool:
    """True when the ``CI`` environment variable is set to a true value."""
    return os.environ.get("CI", "").strip().lower() not in FALSE_VALUES


def require_or_skip(problem: str | None, what: str) -> None:
    """Return when ``problem`` is None; else skip the calling test (outside CI) or fail it
    (in CI), naming ``what`` cannot run and why."""
    if problem is None:
        return
    if in_ci():
        pytest.fail(f"{what} must run in CI, but {problem}", pytrace=False)
    pytest.skip(f"{what}: {problem}")
