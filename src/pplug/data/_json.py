"""Reading JSON / JSONL files (optionally gzip-compressed) with errors that name the file."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pplug.errors import DataError


def find_file(directory: Path, name: str) -> Path | None:
    """``directory/name`` or ``directory/name.gz``, whichever exists (plain first)."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def read_json(path: Path) -> Any:
    """Parse a whole JSON file; a syntax error names the file, line and column."""
    try:
        with _open_text(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(path, f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise DataError(path, f"cannot read file: {e}") from None


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, object)`` for each non-blank line (1-based line numbers)."""
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(path, f"invalid JSON: {e.msg} (line {lineno})", index=lineno) from None
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise DataError(path, f"cannot read file: {e}") from None


def require(obj: Any, key: str, kind: type | tuple[type, ...], path: Path, index: int | None,
            prefix: str = "") -> Any:
    """``obj[key]`` checked for presence and type; raises DataError naming file/index/field."""
    name = f"{prefix}{key}"
    if not isinstance(obj, dict):
        raise DataError(path, f"expected an object, got {type(obj).__name__}", index, prefix.rstrip(".") or None)
    if key not in obj:
        raise DataError(path, "missing field", index, name)
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and bool not in _as_tuple(kind):
        want = " or ".join(t.__name__ for t in _as_tuple(kind))
        raise DataError(path, f"expected {want}, got {type(value).__name__}", index, name)
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)
