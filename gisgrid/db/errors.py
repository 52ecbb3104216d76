"""Turn database errors into gisgrid errors that name what was wrong (one place)."""
from __future__ import annotations

from psycopg import errors as pg
from sqlalchemy.exc import DBAPIError

from gisgrid.errors import DuplicateCode, GisgridError, InvalidGeometry, InvalidInput, UnknownReference


def translate(exc: DBAPIError, *, record: str | None = None) -> GisgridError:
    orig = exc.orig
    diag = getattr(orig, "diag", None)
    detail = (getattr(diag, "message_detail", None) or "").strip()
    primary = (getattr(diag, "message_primary", None) or str(orig)).strip()
    constraint = getattr(diag, "constraint_name", None) or ""
    table = getattr(diag, "table_name", None) or ""
    where = f"{table}: " if table else ""
    if isinstance(orig, pg.UniqueViolation):
        return DuplicateCode(f"{where}duplicate value: {detail or primary}", record=record)
    if isinstance(orig, pg.ForeignKeyViolation):
        return UnknownReference(f"{where}unknown reference: {detail or primary}", record=record)
    if isinstance(orig, pg.CheckViolation):
        cls = InvalidGeometry if "geom" in constraint or "anchor" in constraint else InvalidInput
        return cls(f"{where}violates {constraint}: {detail or primary}", record=record)
    if isinstance(orig, pg.NotNullViolation):
        return InvalidInput(f"{where}missing required value: {primary}", record=record,
                            field=getattr(diag, "column_name", None))
    if isinstance(orig, (pg.InvalidParameterValue, pg.InternalError_)) and "SRID" in primary:
        return InvalidGeometry(f"{where}{primary}", record=record)
    if isinstance(orig, pg.DataError):
        return InvalidInput(f"{where}{primary}", record=record)
    return GisgridError(f"{where}{primary}", record=record)
