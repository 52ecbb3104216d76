"""Column helpers shared by the layer tables: geometry columns and validity checks."""
from __future__ import annotations

from geoalchemy2 import Geometry
from sqlalchemy import CheckConstraint, Index

from gisgrid.db.base import SRID


def geom_type(kind: str) -> Geometry:
    # spatial_index=False: each table declares its GiST index explicitly, so migrations show it.
    return Geometry(kind, srid=SRID, spatial_index=False)


def gist(table: str, column: str = "geom") -> Index:
    return Index(f"ix_{table}_{column}", column, postgresql_using="gist")


def valid(column: str = "geom") -> CheckConstraint:
    """The database refuses invalid geometry even from raw SQL (the layer code checks first,
    with a clearer message)."""
    return CheckConstraint(f"{column} IS NULL OR ST_IsValid({column})", name=f"{column}_valid")


def types(column: str, *kinds: str) -> CheckConstraint:
    allowed = ", ".join(f"'ST_{k}'" for k in kinds)
    return CheckConstraint(f"{column} IS NULL OR ST_GeometryType({column}) IN ({allowed})", name=f"{column}_type")
