"""The namespace topologies for the tests: ``bench.netns`` (shared with ``make bench-net``),
plus the tests' rule for what cannot run here: skipped outside CI, a failure in CI."""

from __future__ import annotations

from bench.netns import (
    LOSS_TABLE,
    PREFIX,
    Namespaces,
    NetnsError,
    TwoHosts,
    _delete_namespace,
    _pid_alive,
    _run,
    missing_requirements,
    reap_stale,
    two_hosts,
)

from .ci import require_or_skip

__all__ = [
    "LOSS_TABLE",
    "PREFIX",
    "Namespaces",
    "NetnsError",
    "TwoHosts",
    "_delete_namespace",
    "_pid_alive",
    "_run",
    "missing_requirements",
    "reap_stale",
    "require",
    "two_hosts",
]


def require() -> None:
    """Skip the calling test when namespaces cannot be made here, except in CI, where CI
    runs as root and a missing requirement is a failure."""
    require_or_skip(missing_requirements(), "the network namespace test")
