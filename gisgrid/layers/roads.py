"""Roads: lines from OSM or the generator. Grid boundaries follow them; planners use them as
barriers."""
from __future__ import annotations

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from gisgrid.db.base import Base
from gisgrid.layers._columns import geom_type, gist, types, valid

MAJOR = ("motorway", "trunk", "primary", "secondary")


class Road(Base):
    __tablename__ = "road"
    __table_args__ = (valid(), types("geom", "LineString", "MultiLineString"), gist("road"))

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(40), default="residential", server_default="residential")
    source: Mapped[str | None] = mapped_column(String(40))
    geom = mapped_column(geom_type("GEOMETRY"), nullable=False)
