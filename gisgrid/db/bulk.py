"""Bulk loading with COPY (used by the generator and importers: one transaction, fast)."""
from __future__ import annotations

import io

import pandas as pd
import shapely
from sqlalchemy import text
from sqlalchemy.orm import Session

from gisgrid.db.base import SRID


def ewkb_hex(geoms) -> "pd.Series":
    """Hex EWKB with SRID 4326, the text form COPY accepts for geometry columns."""
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
