"""Bulk re-linking of incident points to grids, and single-point lookup latency.

    GISGRID_HOME=/tmp/gg-bench GISGRID_PG_FAST=1 .venv/bin/python bench/link.py [--scale city|demo]
        [--repeat N] [--lookups N]

Loads the generated dataset into the bench cluster if it is not there (minutes at city scale),
then for each variant starts from the same state (every incident link column NULL, VACUUMed;
the reset is timed apart) and times it end to end, in one committed transaction:

* gisgrid        ``linking.relink(session, ("incident",))`` – what ``gisgrid link`` runs;
* (a)            the obvious point-driven ``UPDATE … FROM grid WHERE ST_Contains`` (5 columns);
* (b…)           plain-SQL formulations (see PLAIN below);
* (c)            geopandas: read, ``sjoin``, lowest code per point, COPY back + UPDATE … FROM.

Every result's ``(id, grid_id)`` is compared with gisgrid's. No timing asserts.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time

import numpy as np
import pandas as pd

SCALE_DEFAULT_HOME = {"city": "/tmp/gg-bench", "demo": "/tmp/gg-bench-demo"}
COLS = ("grid_id", "grid_code", "community_code", "street_code", "district_code")
RESET = "UPDATE incident SET " + ", ".join(f"{c} = NULL" for c in COLS)
SET_FROM_G = ("grid_id = g.id, grid_code = g.code, community_code = g.community_code, "
              "street_code = g.street_code, district_code = g.district_code")
SET_FROM_L = ", ".join(f"{c} = l.{c}" for c in COLS)
SEL_G = "g.id AS grid_id, g.code AS grid_code, g.community_code, g.street_code, g.district_code"
POLY_DRIVEN = ("FROM grid g CROSS JOIN LATERAL (SELECT id FROM incident p WHERE ST_Intersects(g.geom, p.geom)) p "
               "WHERE g.valid_to IS NULL")


def log(*a):
    print(*a, flush=True)


# -- setup ------------------------------------------------------------------------------------
def connect(scale: str):
    os.environ.setdefault("GISGRID_HOME", SCALE_DEFAULT_HOME[scale])
    os.environ.setdefault("GISGRID_PG_FAST", "1")
    from gisgrid import config
    from gisgrid.db.engine import database_url, make_engine, make_sessionmaker

    home = config.load().home
    if config.load().embedded:
        home.mkdir(parents=True, exist_ok=True)
        home.chmod(0o755)
    engine = make_engine(database_url(config.load()))
    dsn = engine.url.render_as_string(hide_password=False).replace("postgresql+psycopg://", "postgresql://")
    return engine, make_sessionmaker(engine), dsn


def ensure_dataset(engine, Session, scale: str) -> None:
    from gisgrid import generate as gen
    from gisgrid.db import migrate
    from sqlalchemy import text

    migrate.upgrade(engine)
    want = gen.SCALES[scale]
    with Session() as s:
        n_grid = s.scalar(text("SELECT count(*) FROM grid"))
        n_inc = s.scalar(text("SELECT count(*) FROM incident"))
    if n_inc == want.incidents and (scale != "city" or n_grid == 40_000):
        log(f"dataset {scale}: {n_grid:,} grids, {n_inc:,} incidents (already loaded)")
        return
    log(f"dataset {scale} not loaded ({n_grid:,} grids, {n_inc:,} incidents): generating with replace…")
    t0 = time.perf_counter()
    tick = lambda what, n: log(f"  {time.perf_counter() - t0:7.1f} s  {what}: {n:,}")  # noqa: E731
    frames = gen.build(scale, progress=tick)
    with Session.begin() as s:
        gen.load(s, frames, replace=True, progress=tick)
    log(f"generation + load: {time.perf_counter() - t0:.0f} s")
