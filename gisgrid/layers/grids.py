"""Grids (网格): the smallest unit of responsibility, drawn inside one community.

A community's current grids cover it with no gaps and no overlaps (checked by
``gisgrid.spatial.coverage``). A grid code extends its community's 12-digit code with a
3-digit serial (``420103001001`` + ``007``). Redrawn grids are not deleted: the old row gets
``valid_to`` and the new one ``valid_from``, so history stays; only rows with ``valid_to IS NULL``
are current, and a code is unique among current grids.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, DateTime, ForeignKey, Index, Integer, String, func, text
from sqlalchemy.orm import Mapped, Session, mapped_column

from gisgrid.db.base import Base
from gisgrid.layers._columns import geom_type, gist, types, valid

KINDS = ("urban", "rural")
TARGET_HOUSEHOLDS = {"urban": 250, "rural": 150}


class Grid(Base):
    __tablename__ = "grid"
    __table_args__ = (
        CheckConstraint("kind IN ('urban', 'rural')", name="kind"),
        CheckConstraint("code ~ '^[0-9]{12}[0-9]{3,}$'", name="code_format"),
        valid(), types("geom", "MultiPolygon"), gist("grid"),
        Index("uq_grid_code_current", "code", unique=True, postgresql_where=text("valid_to IS NULL")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(100))
    community_code: Mapped[str] = mapped_column(String(12), ForeignKey("admin_area.code"), index=True)
    street_code: Mapped[str] = mapped_column(String(12), index=True)
    district_code: Mapped[str] = mapped_column(String(12), index=True)
    kind: Mapped[str] = mapped_column(String(10), default="urban", server_default="urban")
    plan_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("grid_plan.id", ondelete="SET NULL"))
    valid_from: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    valid_to: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    geom = mapped_column(geom_type("MULTIPOLYGON"), nullable=False)


# The rule for a point on an edge shared by two grids, used by every lookup and by linking:
# of the current grids that intersect the point (interior or boundary), the one with the
# lowest code wins. It is deterministic and does not depend on row order or insertion time.
LOOKUP_SQL = text(
    "SELECT id, code, community_code, street_code, district_code FROM grid "
    "WHERE valid_to IS NULL AND ST_Intersects(geom, ST_SetSRID(ST_MakePoint(:lon, :lat), 4326)) "
    "ORDER BY code LIMIT 1"
)


def grid_at(session: Session, lon: float, lat: float) -> dict | None:
    """The current grid containing a lon/lat point (EPSG:4326), or None outside every grid.

    Parameters
    ----------
    session : Session
    lon, lat : float
        WGS84/CGCS2000 degrees. Convert GCJ-02/BD-09 first.

    Returns
    -------
    dict with ``id, code, community_code, street_code, district_code``, or None.

    Examples
    --------
    >>> grid_at(session, 114.27, 30.58)["code"]    # doctest: +SKIP
    '420103001001001'
    """
    from gisgrid.spatial.geometry import point

    p = point(lon, lat)
    row = session.execute(LOOKUP_SQL, {"lon": p.x, "lat": p.y}).mappings().first()
    return dict(row) if row else None


ALL = ("TRUE", {})


def summary(session: Session, *, limit: int | None = None, scope: tuple[str, dict] = ALL) -> list[dict]:
    """Current grids with households, buildings and open incidents, as GeoJSON features
    (coordinates to 6 decimals, about 10 cm). ``scope`` is a condition on ``g`` from
    :func:`gisgrid.authz.scope_sql` (``grid_col="code"``)."""
    from gisgrid.layers.incidents import OPEN_STATES

    rows = session.execute(text(
        "SELECT g.id, g.code, g.name, g.community_code, ST_AsGeoJSON(g.geom, 6) AS geojson, "
        "coalesce(b.hh, 0) AS households, coalesce(b.n, 0) AS buildings, coalesce(i.n, 0) AS open_incidents "
        "FROM grid g "
        "LEFT JOIN (SELECT l.grid_id, sum(households) AS hh, count(*) AS n FROM building b JOIN building_link l "
        "ON l.id = b.id GROUP BY l.grid_id) b ON b.grid_id = g.id "
        "LEFT JOIN (SELECT l.grid_id, count(*) AS n FROM incident i JOIN incident_link l ON l.id = i.id "
        "WHERE i.state = ANY(:open) GROUP BY l.grid_id) i "
        f"ON i.grid_id = g.id WHERE g.valid_to IS NULL AND {scope[0]} ORDER BY g.code LIMIT :limit"),
        {"open": list(OPEN_STATES), "limit": limit, **scope[1]}).mappings()
    import json

    return [{"type": "Feature", "geometry": json.loads(r["geojson"]),
             "properties": {k: r[k] for k in ("id", "code", "name", "community_code", "households", "buildings",
                                              "open_incidents")}} for r in rows]


def count_current(session: Session, scope: tuple[str, dict] = ALL) -> int:
    return session.execute(text(f"SELECT count(*) FROM grid g WHERE valid_to IS NULL AND {scope[0]}"),
                           scope[1]).scalar()
