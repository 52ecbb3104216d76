"""Residents (居民): personal data (PIPL). Linked through their building, or their own point
when they have no building record. A resident with neither is refused.

ID number and phone are never stored in clear: each has its Fernet ciphertext (``*_enc``), its
masked form (``*_masked``, what responses show) and, for the ID number, a keyed blind index to
find a resident by it (see :mod:`gisgrid.pii`). Reading the clear value is an audited act.
"""
from __future__ import annotations

from datetime import date

from sqlalchemy import CheckConstraint, Date, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from gisgrid.db.base import Base
from gisgrid.layers._columns import geom_type, gist, types, valid


class Resident(Base):
    __tablename__ = "resident"
    __table_args__ = (
        CheckConstraint("building_id IS NOT NULL OR geom IS NOT NULL", name="building_or_point"),
        CheckConstraint("gender IS NULL OR gender IN ('M', 'F')", name="gender"),
        valid(), types("geom", "Point"), gist("resident"),
        # partial (migration 0015): looked up by value only, and most bulk-imported rows have neither
        Index("ix_resident_building_id", "building_id", postgresql_where=text("building_id IS NOT NULL")),
        Index("ix_resident_id_number_index", "id_number_index", postgresql_where=text("id_number_index IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    gender: Mapped[str | None] = mapped_column(String(1))
    birth_date: Mapped[date | None] = mapped_column(Date)
    id_number_enc: Mapped[str | None] = mapped_column(Text)
    id_number_masked: Mapped[str | None] = mapped_column(String(18))
    id_number_index: Mapped[str | None] = mapped_column(String(64))
    phone_enc: Mapped[str | None] = mapped_column(Text)
    phone_masked: Mapped[str | None] = mapped_column(String(20))
    tags: Mapped[list[str]] = mapped_column(ARRAY(String(40)), default=list, server_default="{}")
    building_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("building.id", ondelete="RESTRICT"))
    geom = mapped_column(geom_type("POINT"), nullable=True)


PII_FIELDS = ("id_number", "phone")


def protect(vault, id_number: str | None, phone: str | None) -> dict:
    """The stored columns for clear ``id_number`` and ``phone``."""
    from gisgrid import pii

    return {"id_number_enc": None if id_number is None else vault.encrypt(id_number).decode(),
            "id_number_masked": pii.mask_id(id_number), "id_number_index": vault.index(id_number),
            "phone_enc": None if phone is None else vault.encrypt(phone).decode(),
            "phone_masked": pii.mask_phone(phone)}


_PUBLIC_COLUMNS = ("code", "name", "gender", "birth_date", "id_number_masked", "phone_masked", "tags",
                   "grid_code", "community_code", "street_code", "district_code")


_LINK = "LEFT JOIN resident_link l ON l.id = r.id"
_SELECT = (f"SELECT r.*, {', '.join('l.' + c for c in ('grid_code', 'community_code', 'street_code', 'district_code'))}, "
           f"b.code AS building_code FROM resident r {_LINK} LEFT JOIN building b ON b.id = r.building_id")


def _row(r) -> dict:
    d = {k: r[k] for k in _PUBLIC_COLUMNS}
    d["birth_date"] = d["birth_date"].isoformat() if d["birth_date"] else None
    d["id_number"], d["phone"] = d.pop("id_number_masked"), d.pop("phone_masked")
    d["building_code"] = r["building_code"]
    return d


def page(session, scope: tuple[str, dict], *, grid_code: str | None = None, limit: int = 100,
         offset: int = 0) -> dict:
    """Residents inside ``scope`` (from :func:`gisgrid.authz.scope_sql` on the link ``l``), masked,
    ordered by code: ``{"total", "items"}``."""
    from sqlalchemy import text

    cond = f"{scope[0]}" + (" AND l.grid_code = :grid" if grid_code else "")
    params = {**scope[1], "grid": grid_code, "limit": limit, "offset": offset}
    total = session.execute(text(f"SELECT count(*) FROM resident r {_LINK} WHERE {cond}"), params).scalar()
    rows = session.execute(text(f"{_SELECT} WHERE {cond} ORDER BY r.code LIMIT :limit OFFSET :offset"),
                           params).mappings()
    return {"total": total, "items": [_row(r) for r in rows]}


def get(session, scope: tuple[str, dict], code: str, *, unmask_for: str | None = None,
        reason: str | None = None) -> dict:
    """One resident inside ``scope``, masked; with ``unmask_for`` (the actor, who must hold the
    PII permission: the caller checks) the clear ID number and phone, and an audit row saying
    who read whose data and why."""
    from sqlalchemy import text

    from gisgrid import pii
    from gisgrid.errors import InvalidInput, NotFound
    from gisgrid.layers import audit

    r = session.execute(text(f"{_SELECT} WHERE r.code = :code AND {scope[0]}"),
                        {"code": code, **scope[1]}).mappings().first()
    if r is None:
        raise NotFound(f"no resident {code!r} in your jurisdiction", field="code")
    out = _row(r)
    if unmask_for:
        if not reason or not reason.strip():
            raise InvalidInput("reading unmasked personal data needs a reason", field="reason")
        vault = pii.vault()
        out["id_number"] = vault.decrypt(r["id_number_enc"] and r["id_number_enc"].encode())
        out["phone"] = vault.decrypt(r["phone_enc"] and r["phone_enc"].encode())
        audit.record(session, unmask_for, "read_pii", "resident", r["id"], reason=reason.strip()[:500],
                     after={"code": code, "fields": ["id_number", "phone"]})
    return out
