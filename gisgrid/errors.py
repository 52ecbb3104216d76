"""Errors that carry what was received, what is allowed, and an HTTP status.

Raised by layers and spatial code; mapped to JSON (API) or a message and non-zero exit (CLI)
in one place each (``web/errors.py``, ``cli.py``).
"""
from __future__ import annotations


class GisgridError(Exception):
    status = 400

    def __init__(self, message: str, *, record: str | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.record = record
        self.field = field

    def to_dict(self) -> dict:
        d = {"error": type(self).__name__, "message": self.message}
        if self.record is not None:
            d["record"] = self.record
        if self.field is not None:
            d["field"] = self.field
        return d

    def __str__(self) -> str:
        where = " ".join(x for x in (self.record and f"[{self.record}]", self.field and f"{self.field}:") if x)
        return f"{where} {self.message}".strip()


class InvalidInput(GisgridError):
    """A value of the wrong type or out of range."""


class InvalidGeometry(GisgridError):
    """A geometry that is invalid, empty, of the wrong type or in the wrong CRS."""


class UnknownReference(GisgridError):
    """A code that names no admin area, grid, building…"""
    status = 422


class DuplicateCode(GisgridError):
    status = 409


class NotFound(GisgridError):
    status = 404


class ClusterError(GisgridError):
    """The embedded PostgreSQL cluster could not be set up or started."""
    status = 503


class Conflict(GisgridError):
    status = 409


class IllegalTransition(Conflict):
    """An action the incident's state does not allow; names the allowed ones."""

    def __init__(self, message: str, allowed: list[str]):
        super().__init__(message, field="action")
        self.allowed = allowed

    def to_dict(self) -> dict:
        return {**super().to_dict(), "allowed": self.allowed}
