"""Column helpers shared by the layer tables: geometry columns, validity checks, link columns."""
from __future__ import annotations

from geoalchemy2 import Geometry
from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

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


class Linked:
    """The grid and admin areas that contain a record, stored (not computed at read time).

    Written by :mod:`gisgrid.layers.linking` in the same transaction as the record.
    ``grid_id`` NULL means the record lies outside every current grid ("unlinked"); its admin
    codes then come from the admin areas that contain it, so it is still routed to a street or
    district centre.
    """

    @declared_attr
    def grid_id(cls) -> Mapped[int | None]:
        return mapped_column(Integer, ForeignKey("grid.id", ondelete="SET NULL"), index=True)

    grid_code: Mapped[str | None] = mapped_column(String(20))
    community_code: Mapped[str | None] = mapped_column(String(12), index=True)
    street_code: Mapped[str | None] = mapped_column(String(12), index=True)
    district_code: Mapped[str | None] = mapped_column(String(12), index=True)
