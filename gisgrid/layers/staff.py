"""Staff and who answers for which grid ("1+X+Y": one grid head, X assistants, Y informants,
plus community police and others who sink into the grid)."""
from __future__ import annotations

from datetime import date

from sqlalchemy import CheckConstraint, Date, ForeignKey, Integer, String, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from gisgrid.db.base import Base

ROLES = {"head": "网格长", "assistant": "网格协理员", "informant": "网格信息员", "police": "社区民警"}


class Staff(Base):
    __tablename__ = "staff"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    phone: Mapped[str | None] = mapped_column(String(20))
    organisation: Mapped[str | None] = mapped_column(String(100))
    community_code: Mapped[str | None] = mapped_column(String(12), ForeignKey("admin_area.code"), index=True)


class GridAssignment(Base):
    __tablename__ = "grid_assignment"
    __table_args__ = (CheckConstraint("role IN ('head', 'assistant', 'informant', 'police')", name="role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    staff_id: Mapped[int] = mapped_column(Integer, ForeignKey("staff.id", ondelete="CASCADE"), index=True)
    grid_id: Mapped[int] = mapped_column(Integer, ForeignKey("grid.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(20))
    valid_from: Mapped[date] = mapped_column(Date, server_default=func.current_date())
    valid_to: Mapped[date | None] = mapped_column(Date)


def team(session: Session, grid_id: int) -> list[dict]:
    """The current team of a grid, head first."""
    order = {"head": 0, "assistant": 1, "police": 2, "informant": 3}
    rows = session.execute(
        select(Staff.name, Staff.phone, GridAssignment.role)
        .join(GridAssignment, GridAssignment.staff_id == Staff.id)
        .where(GridAssignment.grid_id == grid_id, GridAssignment.valid_to.is_(None))
    ).all()
    return sorted(({"name": n, "phone": p, "role": r, "role_label": ROLES[r]} for n, p, r in rows),
                  key=lambda m: (order[m["role"]], m["name"]))
