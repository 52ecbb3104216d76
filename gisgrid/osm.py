"""Import buildings and roads from an OpenStreetMap ``.osm.pbf`` extract with pyrosm.

Buildings become footprints (``code`` = ``osm-<type><id>``, ``source`` = ``osm``), roads become
lines with their ``highway`` class. Invalid OSM polygons are repaired with ``make_valid`` (the
polygonal part kept) and counted; anything still unusable is counted and left out, never
stored half-valid. Runs in the caller's transaction and links the buildings before returning.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import shapely
from sqlalchemy import text
from sqlalchemy.orm import Session

from gisgrid.db.bulk import copy_frame, ewkb_hex, reset_sequence
from gisgrid.errors import InvalidInput
from gisgrid.layers import linking


def _polygonal(geoms: np.ndarray) -> np.ndarray:
    fixed = np.where(shapely.is_valid(geoms), geoms, shapely.make_valid(geoms))
    out = []
    for g in fixed:
        if g is None or g.is_empty:
            out.append(None)
        elif g.geom_type in ("Polygon", "MultiPolygon"):
            out.append(g)
        else:  # a GeometryCollection from make_valid: keep its polygons
            polys = [p for p in getattr(g, "geoms", []) if p.geom_type in ("Polygon", "MultiPolygon")]
            out.append(shapely.union_all(polys) if polys else None)
    return np.array(out, dtype=object)


def _levels(v) -> int | None:
    try:
        n = int(float(str(v).split(";")[0]))
    except (TypeError, ValueError):
        return None
    return n if n > 0 else None


def import_pbf(session: Session, path: str | Path, *, actor: str | None = None) -> dict[str, int]:
    """Load buildings and roads from ``path``; returns counts (``buildings``, ``roads``,
    ``repaired``, ``skipped``)."""
    from pyrosm import OSM

    path = Path(path)
    if path.suffix != ".pbf":
        raise InvalidInput(f"expected an .osm.pbf file, got {path.name}", field="path")
    try:
        osm = OSM(str(path))
        buildings = osm.get_buildings()
        roads = osm.get_network(network_type="all")
    except Exception as e:  # pyrosm raises bare errors on corrupt files
        raise InvalidInput(f"cannot read {path.name} as OSM PBF: {e}", field="path") from e
    counts = {"buildings": 0, "roads": 0, "repaired": 0, "skipped": 0}
    start_b = session.scalar(text("SELECT coalesce(max(id), 0) FROM building"))
    if buildings is not None and len(buildings):
        raw = buildings.geometry.to_numpy()
        geoms = _polygonal(raw)
        counts["repaired"] = int((~shapely.is_valid(raw)).sum())
        ok = np.array([g is not None for g in geoms])
        counts["skipped"] += int((~ok).sum())
        b = buildings[ok]
        df = pd.DataFrame({
            "code": ("osm-" + b["osm_type"].astype(str).str[0] + b["id"].astype(str)).to_numpy(),
            "name": b["name"].where(b["name"].notna(), None).to_numpy() if "name" in b else None,
            "households": 0,
            "floors": pd.array([_levels(v) for v in (b["building:levels"] if "building:levels" in b
                                                     else [None] * len(b))], dtype="Int64"),
            "source": "osm",
            "geom": ewkb_hex(geoms[ok]),
        }).drop_duplicates("code")
        counts["buildings"] = copy_frame(session, "building", df)
        reset_sequence(session, "building")
    if roads is not None and len(roads):
        lines = roads.geometry.to_numpy()
        keep = shapely.is_valid(lines) & ~shapely.is_empty(lines)
        counts["skipped"] += int((~keep).sum())
        r = roads[keep]
        df = pd.DataFrame({
            "code": ("osm-w" + r["id"].astype(str)).to_numpy(),
            "name": r["name"].where(r["name"].notna(), None).to_numpy() if "name" in r else None,
            "kind": r["highway"].fillna("road").astype(str).to_numpy(),
            "source": "osm", "geom": ewkb_hex(lines[keep]),
        }).drop_duplicates("code")
        counts["roads"] = copy_frame(session, "road", df)
        reset_sequence(session, "road")
    ids = [i for (i,) in session.execute(text("SELECT id FROM building WHERE id > :s"), {"s": start_b})]
    linking.link_ids(session, "building", ids)
    from gisgrid.layers import audit

    audit.record(session, actor, "bulk_load", "osm", None, after={"file": path.name, **counts})
    return counts
