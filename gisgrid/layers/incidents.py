"""Incidents (事件) and their history.

An incident is a work order: a located report that runs the closed loop
受理 accept → 分流 dispatch → 处置 handle → 反馈 feedback → 评价 evaluate → close.
Every state change is an ``incident_event`` row (who, when, from, to, note). The allowed
transitions live in ``TRANSITIONS`` below and nowhere else.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, DateTime, Float, ForeignKey, Integer, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from gisgrid.db.base import Base
from gisgrid.layers._columns import Linked, geom_type, gist, types, valid

STATES = {
    "reported": "待受理", "accepted": "已受理", "dispatched": "已分派", "handling": "处置中",
    "feedback": "已反馈", "evaluated": "已评价", "closed": "已办结",
}
TRANSITIONS = {
    "reported": ("accepted", "closed"),          # closed here = rejected as invalid/duplicate
    "accepted": ("dispatched",),
    "dispatched": ("handling", "accepted"),       # accepted = returned/escalated for re-dispatch
    "handling": ("feedback", "dispatched"),
    "feedback": ("evaluated", "handling"),        # handling = reporter not satisfied, redo
    "evaluated": ("closed",),
    "closed": (),
}
OPEN_STATES = ("reported", "accepted", "dispatched", "handling", "feedback")
CATEGORIES = {
    "dispute": "矛盾纠纷", "security": "治安隐患", "fire": "消防安全", "gas": "燃气安全",
    "building_safety": "房屋安全", "city_management": "城市管理", "sanitation": "环境卫生",
    "rental_housing": "出租房屋", "floating_population": "流动人口", "elderly_care": "关爱帮扶",
    "road_facility": "道路设施", "noise": "噪声扰民",
}
SOURCES = {"patrol": "网格巡查", "resident": "群众上报", "hotline": "12345热线", "import": "导入"}
_STATES_SQL = ", ".join(f"'{s}'" for s in STATES)


class Incident(Linked, Base):
    __tablename__ = "incident"
    __table_args__ = (
        CheckConstraint(f"state IN ({_STATES_SQL})", name="state"),
        CheckConstraint("satisfaction IS NULL OR satisfaction BETWEEN 1 AND 5", name="satisfaction"),
        CheckConstraint("accuracy_m IS NULL OR accuracy_m >= 0", name="accuracy"),
        valid(), types("geom", "Point"), gist("incident"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(100), unique=True)
    category: Mapped[str] = mapped_column(String(40), index=True)
    description: Mapped[str] = mapped_column(Text, default="", server_default="")
    address: Mapped[str | None] = mapped_column(String(300))
    source: Mapped[str] = mapped_column(String(20), default="patrol", server_default="patrol")
    reporter: Mapped[str | None] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(20), default="reported", server_default="reported", index=True)
    assignee_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("staff.id", ondelete="SET NULL"))
    accuracy_m: Mapped[float | None] = mapped_column(Float)
    input_crs: Mapped[str] = mapped_column(String(20), default="EPSG:4326", server_default="EPSG:4326")
    reported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), index=True)
    deadline: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    satisfaction: Mapped[int | None] = mapped_column(Integer)
    geom = mapped_column(geom_type("POINT"), nullable=False)


class IncidentEvent(Base):
    __tablename__ = "incident_event"

    id: Mapped[int] = mapped_column(primary_key=True)
    incident_id: Mapped[int] = mapped_column(Integer, ForeignKey("incident.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    actor: Mapped[str | None] = mapped_column(String(100))
    from_state: Mapped[str | None] = mapped_column(String(20))
    to_state: Mapped[str] = mapped_column(String(20))
    note: Mapped[str | None] = mapped_column(Text)


def points(session, *, open_only: bool = False, limit: int = 50_000, scope: tuple[str, dict] = ("TRUE", {})) -> list[dict]:
    """Incident points (lon, lat, state, category, code), newest first; ``scope`` from
    :func:`gisgrid.authz.scope_sql`."""
    from sqlalchemy import text

    where = "state = ANY(:open)" if open_only else "TRUE"
    rows = session.execute(text(
        f"SELECT code, state, category, ST_X(geom) AS lon, ST_Y(geom) AS lat, grid_code FROM incident "
        f"WHERE {where} AND {scope[0]} ORDER BY reported_at DESC LIMIT :limit"),
        {"open": list(OPEN_STATES), "limit": limit, **scope[1]}).mappings()
    return [dict(r) for r in rows]
