"""The audit log: who did what to which record, when, with the before and after values, and
every read of a person's unmasked data (who, whom, when, why).

Rows are only ever inserted, in the same transaction as the act they record, so an act and its
audit row are committed or lost together. Personal values never enter the log in clear.

A file import is one row (``action="import"``, no ``entity_id``): the file's name and SHA-256,
CRS, mode, counts and the ids of the records it created and updated as runs of consecutive ids
(``after["created_ids"]``, ``after["updated_ids"]``: ``[[first, last], …]``; expand them with
:func:`imported_ids`), so a million-row register costs one row, not a million, and "which
import wrote this record" stays answerable. Records an import deletes or retires keep a row
each (with their code, which their table no longer holds).
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, String, Text, func, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, Session, mapped_column

from gisgrid.db.base import Base


class AuditLog(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), index=True)
    actor: Mapped[str | None] = mapped_column(String(100), index=True)
    action: Mapped[str] = mapped_column(String(40))
    entity: Mapped[str] = mapped_column(String(40))
    entity_id: Mapped[str | None] = mapped_column(String(40))
    before: Mapped[dict | None] = mapped_column(JSONB)
    after: Mapped[dict | None] = mapped_column(JSONB)
    reason: Mapped[str | None] = mapped_column(Text)


def record(session: Session, actor: str | None, action: str, entity: str, entity_id=None, *,
           before: dict | None = None, after: dict | None = None, reason: str | None = None) -> None:
    """Add one audit row in the caller's transaction."""
    session.add(AuditLog(actor=actor, action=action, entity=entity,
                         entity_id=None if entity_id is None else str(entity_id),
                         before=before, after=after, reason=reason))


def record_many(session: Session, actor: str | None, action: str, entity: str, rows: list[tuple]) -> None:
    """Audit rows ``(entity_id, before, after)`` in one statement."""
    from sqlalchemy import insert

    if rows:
        session.execute(insert(AuditLog), [
            {"actor": actor, "action": action, "entity": entity, "entity_id": str(i), "before": b, "after": a}
            for i, b, a in rows])


def imported_ids(row: AuditLog, which: str = "created_ids") -> list[int]:
    """The ids an ``import`` row records (``which``: ``created_ids`` or ``updated_ids``).

    >>> imported_ids(AuditLog(action="import", after={"created_ids": [[3, 5], [9, 9]]}))
    [3, 4, 5, 9]
    """
    if row.action != "import":
        raise ValueError(f"audit row {row.id} is a {row.action!r} row, not an import")
    return [i for lo, hi in (row.after or {}).get(which, []) for i in range(lo, hi + 1)]


def query(session: Session, *, actor: str | None = None, entity: str | None = None, action: str | None = None,
          since: datetime | None = None, until: datetime | None = None, limit: int = 100) -> list[AuditLog]:
    """Newest first, filtered."""
    q = select(AuditLog).order_by(AuditLog.id.desc()).limit(limit)
    if actor:
        q = q.where(AuditLog.actor == actor)
    if entity:
        q = q.where(AuditLog.entity == entity)
    if action:
        q = q.where(AuditLog.action == action)
    if since:
        q = q.where(AuditLog.at >= since)
    if until:
        q = q.where(AuditLog.at < until)
    return list(session.scalars(q))
