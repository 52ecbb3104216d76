"""Staff and who answers for which grid ("1+X+Y": one grid head, X assistants, Y informants,
plus community police and others who sink into the grid)."""
from __future__ import annotations

from datetime import date

from sqlalchemy import CheckConstraint, Date, ForeignKey, Integer, String, func, text
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


#: the order a team is listed in
ORDER = ("head", "assistant", "police", "informant")


def team_sql(grid_id: str, *, labelled: bool = False) -> str:
    """An SQL expression: the current team of the grid whose id is the SQL expression
    ``grid_id``, as a JSON array of ``{name, phone, role}``, head first (for use inside a
    larger query; :func:`labelled` adds the role labels, or ``labelled=True`` has the
    statement add them as ``role_label``)."""
    order = ", ".join(f"'{r}'" for r in ORDER)
    label = (", 'role_label', CASE CAST(a.role AS text) "
             + " ".join(f"WHEN '{r}' THEN '{name}'" for r, name in ROLES.items()) + " END") if labelled else ""
    return (f"(SELECT coalesce(json_agg(json_build_object('name', s.name, 'phone', s.phone, 'role', a.role{label}) "
            f"ORDER BY array_position(ARRAY[{order}], CAST(a.role AS text)), s.name), '[]') "
            # each member by primary key (OFFSET 0 keeps the planner from hashing the whole
            # staff table for a team of a few)
            "FROM grid_assignment a CROSS JOIN LATERAL (SELECT name, phone FROM staff WHERE id = a.staff_id OFFSET 0) s "
            f"WHERE a.grid_id = {grid_id} AND a.valid_to IS NULL)")


def labelled(members: list[dict] | None) -> list[dict]:
    return [{**m, "role_label": ROLES[m["role"]]} for m in members or []]


def team(session: Session, grid_id: int) -> list[dict]:
    """The current team of a grid, head first."""
    return labelled(session.execute(text(f"SELECT {team_sql('CAST(:g AS integer)')}"), {"g": grid_id}).scalar())
