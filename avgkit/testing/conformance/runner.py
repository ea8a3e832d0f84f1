"""Running a table of checks over cases, turning skips into a report."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from avgkit.testing.conformance._common import ConformanceSkip


def run_checks(
    checks: dict[str, Callable[[Any], None]],
    cases: Sequence[Any],
    *,
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
) -> dict[str, str]:
    """Run ``checks`` on every case; the first failure raises ``AssertionError`` naming the check."""
    only, skip = (None if only is None else set(only)), set(skip)
    unknown = ((only or set()) | skip) - set(checks)
    if unknown:
        raise ValueError(f"unknown conformance checks {sorted(unknown)}; known: {', '.join(checks)}")
    report: dict[str, str] = {}
    for case in cases:
        for name, check in checks.items():
            if (only is not None and name not in only) or name in skip:
                continue
            key = f"{name} {case.where}"
            try:
                check(case)
            except ConformanceSkip as why:
                report[key] = f"skipped: {why}"
                continue
            except AssertionError as err:
                raise AssertionError(f"conformance check {name!r} failed: {err}") from None
            report[key] = "ok"
    return report
