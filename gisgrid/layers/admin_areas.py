"""Admin areas: district (区/县), street (街道/乡镇), community (社区/村).

Each carries its 12-digit national division code (行政区划代码: district 6 + street 3 +
community 3, zero-padded) and the codes of the areas above it, so a query for "everything in
street X" is an equality filter, not a spatial one. Grids are drawn inside one community.
"""
from __future__ import annotations

import re

from sqlalchemy import CheckConstraint, ForeignKey, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from gisgrid.db.base import Base
from gisgrid.errors import InvalidInput, UnknownReference
from gisgrid.layers._columns import geom_type, gist, types, valid

LEVELS = ("district", "street", "community")
LEVEL_LABELS = {"district": "区", "street": "街道", "community": "社区"}
_CODE = re.compile(r"^\d{12}$")


class AdminArea(Base):
    __tablename__ = "admin_area"
    __table_args__ = (
        CheckConstraint("level IN ('district', 'street', 'community')", name="level"),
        CheckConstraint("code ~ '^[0-9]{12}$'", name="code_12_digits"),
        valid(), types("geom", "MultiPolygon"), gist("admin_area"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(12), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    level: Mapped[str] = mapped_column(String(10))
    parent_code: Mapped[str | None] = mapped_column(String(12), ForeignKey("admin_area.code"), index=True)
    district_code: Mapped[str] = mapped_column(String(12), index=True)
    street_code: Mapped[str | None] = mapped_column(String(12), index=True)
    community_code: Mapped[str | None] = mapped_column(String(12))
    kind: Mapped[str] = mapped_column(String(10), default="urban", server_default="urban")  # urban | rural
    geom = mapped_column(geom_type("MULTIPOLYGON"), nullable=True)


def level_of(code: str) -> str:
    """The level a 12-digit code denotes: ``420103000000`` district, ``420103001000`` street,
    anything with a community part community."""
    if not isinstance(code, str) or not _CODE.match(code):
        raise InvalidInput(f"admin code must be 12 digits, got {code!r}", field="code")
    if code[6:] == "000000":
        return "district"
    if code[9:] == "000":
        return "street"
    return "community"


def chain(code: str) -> dict[str, str | None]:
    """``{district_code, street_code, community_code}`` implied by a 12-digit code."""
    level = level_of(code)
    return {
        "district_code": code[:6] + "000000",
        "street_code": code[:9] + "000" if level != "district" else None,
        "community_code": code if level == "community" else None,
    }


def get(session: Session, code: str) -> AdminArea:
    area = session.scalar(select(AdminArea).where(AdminArea.code == code))
    if area is None:
        raise UnknownReference(f"no admin area with code {code!r}", field="code")
    return area


def features(session: Session, level: str, scope: tuple[str, dict] = ("TRUE", {})) -> list[dict]:
    """Admin areas of one level that have a geometry, as GeoJSON features; ``scope`` from
    :func:`gisgrid.authz.admin_area_sql`."""
    import json

    from sqlalchemy import text

    if level not in LEVELS:
        raise InvalidInput(f"level must be one of {LEVELS}, got {level!r}", field="level")
    rows = session.execute(text(
        "SELECT code, name, ST_AsGeoJSON(geom, 6) FROM admin_area "
        f"WHERE level = :level AND geom IS NOT NULL AND {scope[0]} ORDER BY code"), {"level": level, **scope[1]}).all()
    return [{"type": "Feature", "geometry": json.loads(g), "properties": {"code": c, "name": n}} for c, n, g in rows]


def district(session: Session) -> AdminArea | None:
    return session.scalar(select(AdminArea).where(AdminArea.level == "district").order_by(AdminArea.code).limit(1))
