"""Buildings (楼栋): a footprint polygon or a point, with households and floors.

A building is linked to the grid that contains a point on its surface (``anchor``, computed by
the database from ``geom`` with ``ST_PointOnSurface``), so a footprint that touches two grids
still belongs to exactly one.
"""
from __future__ import annotations

from sqlalchemy import CheckConstraint, Computed, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from gisgrid.db.base import Base
from gisgrid.layers._columns import geom_type, gist, types, valid

GEOM_TYPES = ("Polygon", "MultiPolygon", "Point")


class Building(Base):
    __tablename__ = "building"
    __table_args__ = (
        CheckConstraint("households >= 0", name="households"),
        CheckConstraint("floors IS NULL OR floors > 0", name="floors"),
        valid(), types("geom", *GEOM_TYPES), gist("building"), gist("building", "anchor"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    address: Mapped[str | None] = mapped_column(String(300))
    households: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    floors: Mapped[int | None] = mapped_column(Integer)
    source: Mapped[str | None] = mapped_column(String(40))  # generated | osm | import
    geom = mapped_column(geom_type("GEOMETRY"), nullable=False)
    anchor = mapped_column(geom_type("POINT"), Computed("ST_PointOnSurface(geom)", persisted=True))
