"""Helpers shared by the CLI tests (imported by name: pytest puts tests/ on sys.path)."""

from __future__ import annotations

from pplug.cli import main


def run(argv: list[str]) -> int:
    """``main(argv)``'s exit code: 0 when it returns, else the SystemExit code."""
    try:
        main(argv)
    except SystemExit as e:
        return 0 if e.code is None else e.code
    return 0
