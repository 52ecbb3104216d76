"""Bulk loading with COPY (used by the generator and importers: one transaction, fast)."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import shapely
from sqlalchemy import text
from sqlalchemy.orm import Session

from gisgrid.db.base import SRID


#: a 2D point as little-endian EWKB with an SRID: byte order, type | SRID flag, SRID, x, y
_EWKB_POINT = np.dtype([("order", "u1"), ("type", "<u4"), ("srid", "<u4"), ("x", "<f8"), ("y", "<f8")])


def ewkb_hex(geoms) -> np.ndarray:
    """Hex EWKB with SRID 4326, the text form COPY accepts for geometry columns (None stays
    None). Non-empty 2D points are packed by numpy, byte for byte what GEOS writes, 4x faster."""
    geoms = np.asarray(geoms, dtype=object)
    present = ~shapely.is_missing(geoms)
    if present.any() and (shapely.get_type_id(geoms[present]) == 0).all() \
            and not shapely.is_empty(geoms[present]).any() and not shapely.has_z(geoms[present]).any():
        pts = geoms[present]
        buf = np.empty(len(pts), dtype=_EWKB_POINT)
        buf["order"], buf["type"], buf["srid"] = 1, 0x20000001, SRID
        buf["x"], buf["y"] = shapely.get_x(pts), shapely.get_y(pts)
        width = 2 * _EWKB_POINT.itemsize
        out = np.full(len(geoms), None, dtype=object)
        out[present] = np.frombuffer(buf.tobytes().hex().upper().encode(), dtype=f"S{width}").astype(f"U{width}")
        return out
    return shapely.to_wkb(shapely.set_srid(geoms, SRID), hex=True, include_srid=True)


def copy_frame(session: Session, table: str, df: pd.DataFrame, chunk_rows: int = 200_000) -> int:
    """COPY the frame's columns into ``table`` inside the session's transaction. Missing values
    become NULL. Returns rows written."""
    if df.empty:
        return 0
    cols = ", ".join(f'"{c}"' for c in df.columns)
    raw = session.connection().connection.driver_connection  # psycopg connection
    with raw.cursor() as cur:
        with cur.copy(f"COPY {table} ({cols}) FROM STDIN WITH (FORMAT csv, NULL '\\N')") as cp:
            for start in range(0, len(df), chunk_rows):
                buf = io.StringIO()
                df.iloc[start:start + chunk_rows].to_csv(buf, index=False, header=False, na_rep="\\N")
                cp.write(buf.getvalue())
    return len(df)


def reset_sequence(session: Session, table: str) -> None:
    session.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                         f"coalesce((SELECT max(id) FROM {table}), 0) + 1, false)"))
