"""User-facing errors: the CLI prints their message (never a traceback) and exits with code 2."""

from __future__ import annotations


class PPlugError(Exception):
    """An error caused by the user's input or environment, with a message that says what to fix."""


class DataError(PPlugError):
    """A data file is malformed: the message names the file, the record index and the field.

    Args:
        path: the file at fault.
        message: what is wrong.
        index: index of the record in the file (list position or line number), if any.
        field: the field at fault, if any (dotted for nested fields, e.g. ``profile[3].title``).
    """

    def __init__(self, path: object, message: str, index: int | None = None, field: str | None = None):
        where = str(path)
        if index is not None:
            where += f", record {index}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")
        self.path, self.index, self.field = str(path), index, field


class ModelMissingError(PPlugError):
    """A bundled model package or a model path is not installed/found."""
