"""Patrol points and duty posts (巡逻点 / 执勤点) and patrol routes.

Points are linked to their grid; a route is linked by a point on it (``anchor``).
"""
from __future__ import annotations

from sqlalchemy import CheckConstraint, Computed, Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from gisgrid.db.base import Base
from gisgrid.layers._columns import geom_type, gist, types, valid

KINDS = {"patrol_point": "巡逻点", "duty_post": "执勤点"}


class PatrolPoint(Base):
    __tablename__ = "patrol_point"
    __table_args__ = (
        CheckConstraint("kind IN ('patrol_point', 'duty_post')", name="kind"),
        CheckConstraint("radius_m > 0", name="radius"),
        valid(), types("geom", "Point"), gist("patrol_point"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20), default="patrol_point", server_default="patrol_point")
    radius_m: Mapped[float] = mapped_column(Float, default=50, server_default="50")
    visits_per_day: Mapped[int | None] = mapped_column(Integer)
    team: Mapped[str | None] = mapped_column(String(100))
    geom = mapped_column(geom_type("POINT"), nullable=False)


class PatrolRoute(Base):
    __tablename__ = "patrol_route"
    __table_args__ = (valid(), types("geom", "LineString", "MultiLineString"), gist("patrol_route"),
                      gist("patrol_route", "anchor"))

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    team: Mapped[str | None] = mapped_column(String(100))
    geom = mapped_column(geom_type("GEOMETRY"), nullable=False)
    anchor = mapped_column(geom_type("POINT"), Computed("ST_PointOnSurface(geom)", persisted=True))
