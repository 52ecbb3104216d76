"""Users of gisgrid (accounts, not residents). Roles and jurisdictions are enforced by the
authorisation layer; this table only stores them."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, DateTime, String, func
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from gisgrid.db.base import Base

ROLES = {"admin": "管理员", "commander": "指挥中心", "planner": "规划员", "field": "网格员", "viewer": "只读"}


class User(Base):
    __tablename__ = "app_user"
    __table_args__ = (CheckConstraint("role IN ('admin', 'commander', 'planner', 'field', 'viewer')", name="role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    display_name: Mapped[str | None] = mapped_column(String(100))
    password_hash: Mapped[str | None] = mapped_column(String(300))
    role: Mapped[str] = mapped_column(String(20))
    #: admin codes or grid codes the user may see and act on
    jurisdiction: Mapped[list[str]] = mapped_column(ARRAY(String(20)), default=list, server_default="{}")
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
