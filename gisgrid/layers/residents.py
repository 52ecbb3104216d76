"""Residents (居民): personal data (PIPL). Linked through their building, or their own point
when they have no building record. A resident with neither is refused.
"""
from __future__ import annotations

from datetime import date

from sqlalchemy import CheckConstraint, Date, ForeignKey, Integer, String
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from gisgrid.db.base import Base
from gisgrid.layers._columns import Linked, geom_type, gist, types, valid


class Resident(Linked, Base):
    __tablename__ = "resident"
    __table_args__ = (
        CheckConstraint("building_id IS NOT NULL OR geom IS NOT NULL", name="building_or_point"),
        CheckConstraint("gender IS NULL OR gender IN ('M', 'F')", name="gender"),
        valid(), types("geom", "Point"), gist("resident"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    gender: Mapped[str | None] = mapped_column(String(1))
    birth_date: Mapped[date | None] = mapped_column(Date)
    id_number: Mapped[str | None] = mapped_column(String(18))
    phone: Mapped[str | None] = mapped_column(String(20))
    tags: Mapped[list[str]] = mapped_column(ARRAY(String(40)), default=list, server_default="{}")
    building_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("building.id", ondelete="RESTRICT"), index=True)
    geom = mapped_column(geom_type("POINT"), nullable=True)
