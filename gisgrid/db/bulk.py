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


def ewkb_hex(geoms, hex: bool = True) -> np.ndarray:
    """Hex EWKB with SRID 4326, the text form COPY accepts for geometry columns (None stays
    None); with ``hex=False`` the EWKB bytes, the binary form. Non-empty 2D points are packed
    by numpy, byte for byte what GEOS writes, 4x faster."""
    geoms = np.asarray(geoms, dtype=object)
    present = ~shapely.is_missing(geoms)
    if present.any() and (shapely.get_type_id(geoms[present]) == 0).all() \
            and not shapely.is_empty(geoms[present]).any() and not shapely.has_z(geoms[present]).any():
        pts = geoms[present]
        buf = np.empty(len(pts), dtype=_EWKB_POINT)
        buf["order"], buf["type"], buf["srid"] = 1, 0x20000001, SRID
        buf["x"], buf["y"] = shapely.get_x(pts), shapely.get_y(pts)
        out = np.full(len(geoms), None, dtype=object)
        if not hex:
            out[present] = np.frombuffer(buf.tobytes(), dtype=f"S{_EWKB_POINT.itemsize}").astype(object)
            return out
        width = 2 * _EWKB_POINT.itemsize
        out[present] = np.frombuffer(buf.tobytes().hex().upper().encode(), dtype=f"S{width}").astype(f"U{width}")
        return out
    return shapely.to_wkb(shapely.set_srid(geoms, SRID), hex=hex, include_srid=True)


#: column type (``format_type``) → the psycopg type that writes its binary COPY form; a
#: geometry's binary form is its EWKB, written as raw bytes
_BINARY_TYPES = {"text": "text", "character varying": "text", "character": "text", "date": "date",
                 "smallint": "int2", "integer": "int4", "bigint": "int8", "double precision": "float8",
                 "boolean": "bool", "timestamp with time zone": "timestamptz", "geometry": "bytea"}


def binary_types(session: Session, table: str, columns: list[str]) -> list[str] | None:
    """The psycopg types for a binary COPY of ``columns`` into ``table``, or None when a column
    has a type without one here (then COPY in CSV)."""
    rows = dict(session.execute(text(
        "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = CAST(:t AS regclass) "
        "AND attnum > 0 AND NOT attisdropped"), {"t": table}).all())
    types = [_BINARY_TYPES.get(rows.get(c, "")) for c in columns]
    return None if None in types else types


def copy_binary(session: Session, table: str, df: pd.DataFrame, types: list[str]) -> int:
    """COPY the frame into ``table`` in PostgreSQL's binary format (half the time of CSV for a
    million rows: nothing to format or parse). Values are Python objects of ``types``, None for
    NULL; geometry columns hold EWKB bytes (:func:`ewkb_hex` with ``hex=False``)."""
    cols = ", ".join(f'"{c}"' for c in df.columns)
    raw = session.connection().connection.driver_connection
    with raw.cursor() as cur, cur.copy(f"COPY {table} ({cols}) FROM STDIN WITH (FORMAT binary)") as cp:
        cp.set_types(types)
        for row in zip(*(df[c].to_numpy(dtype=object) for c in df.columns)):
            cp.write_row(row)
    return len(df)


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
