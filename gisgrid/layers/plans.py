"""Grid plans: draft boundaries a planner edits before they replace the current grids.

A plan (draft → review → published, or discarded) covers a scope (a community or a street) and
holds candidate cells; each cell carries a version so concurrent edits are detected.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, DateTime, ForeignKey, Integer, String, UniqueConstraint, func
from sqlalchemy.orm import Mapped, mapped_column

from gisgrid.db.base import Base
from gisgrid.layers._columns import geom_type, gist, types, valid

STATES = ("draft", "review", "published", "discarded")


class GridPlan(Base):
    __tablename__ = "grid_plan"
    __table_args__ = (CheckConstraint("state IN ('draft', 'review', 'published', 'discarded')", name="state"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    scope_code: Mapped[str] = mapped_column(String(12), ForeignKey("admin_area.code"), index=True)
    state: Mapped[str] = mapped_column(String(10), default="draft", server_default="draft")
    created_by: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class PlanCell(Base):
    __tablename__ = "plan_cell"
    __table_args__ = (UniqueConstraint("plan_id", "code"), valid(), types("geom", "MultiPolygon"), gist("plan_cell"))

    id: Mapped[int] = mapped_column(primary_key=True)
    plan_id: Mapped[int] = mapped_column(Integer, ForeignKey("grid_plan.id", ondelete="CASCADE"), index=True)
    code: Mapped[str] = mapped_column(String(20))
    community_code: Mapped[str] = mapped_column(String(12))
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    geom = mapped_column(geom_type("MULTIPOLYGON"), nullable=False)
