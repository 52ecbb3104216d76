"""The service survives a restart of its database: requests during the outage fail fast with a
readable 503, and the first request after it succeeds (connections are re-established)."""
from __future__ import annotations

import shutil
import time

import pytest

from gisgrid.db import migrate
from gisgrid.db.cluster import Cluster
from gisgrid.db.engine import make_engine, make_sessionmaker
from gisgrid.layers import users

from conftest import make_home


@pytest.fixture
def own_cluster():
    home = make_home("ggf-") / "c"
    cluster = Cluster(home, fast=True)
    cluster.start()
    yield cluster
    cluster.stop()
    shutil.rmtree(home.parent, ignore_errors=True)


def test_database_restart(own_cluster):
    from gisgrid.web import create_app

    eng = make_engine(own_cluster.url())
    migrate.upgrade(eng)
    with make_sessionmaker(eng)() as s:
        u = users.add(s, "ops", "admin", [], "ops-password-123")
        plain, _ = users.create_token(s, u, "probe", ["read"])
        s.commit()
    eng.dispose()
    app = create_app({"database_url": own_cluster.url(), "home": own_cluster.home, "tile_cache_mb": 0})
    c = app.test_client()
    h = {"Authorization": f"Bearer {plain}"}
    assert c.get("/api/me", headers=h).status_code == 200
    tile = "/tiles/grids/14/13393/6710.pbf"        # drawn on the tile engine's own connection
    assert c.get(tile, headers=h).status_code == 200
    assert c.get("/healthz").status_code == 200
    import re

    token = re.search(rb'name="csrf_token" value="([^"]+)"', c.get("/login").data).group(1).decode()
    login = {"username": "nobody", "password": "wrong-password", "csrf_token": token}
    assert c.post("/login", data=login).status_code == 401    # a rate-limit counter connection now exists

    own_cluster.stop()
    t0 = time.monotonic()
    down = c.get("/api/me", headers=h)
    assert down.status_code == 503 and down.json["error"] == "DatabaseUnavailable"
    assert c.get("/healthz").status_code == 503
    assert c.get(tile, headers=h).status_code == 503
    assert time.monotonic() - t0 < 15          # fails fast, does not hang

    assert c.post("/login", data=login).status_code == 503

    own_cluster.start()
    assert c.get("/api/me", headers=h).status_code == 200   # pool_pre_ping reconnects
    # a tile connection checked in a moment before the restart is used without a ping: its first
    # statement may fail (503) and the pool is made afresh; the retry draws (gisgrid.db.engine)
    codes = [c.get(tile, headers=h).status_code for _ in range(2)]
    assert codes[-1] == 200 and set(codes) <= {200, 503}, codes
    # the counters' connection died with the database: replaced on the next hit, not a 500
    assert c.post("/login", data=login).status_code == 401
    assert c.get("/healthz").json == {"ok": True}
    app.extensions["gisgrid"]["engine"].dispose()
