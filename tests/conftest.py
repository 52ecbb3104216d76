"""Shared fixtures: a real embedded PostGIS cluster in a temp folder, migrated once; a session
per test inside a transaction that is rolled back.

Tiny geometry used across tests (lon/lat degrees, community C = 420103001001)::

        114.00        114.01        114.02
    30.01 +-------------+-------------+
          |             |             |
          |  G1 (…001)  |  G2 (…002)  |     x = 114.01 is the edge shared by G1 and G2
          |             |             |
    30.00 +-------------+-------------+
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from shapely.geometry import box
from sqlalchemy.orm import Session

from gisgrid.config import Settings
from gisgrid.db import migrate
from gisgrid.db.cluster import Cluster
from gisgrid.db.engine import make_engine

# Personal data is encrypted with a key from the environment: a fresh one per test run.
os.environ.setdefault("GISGRID_PII_KEY", __import__("cryptography.fernet", fromlist=["Fernet"]).Fernet.generate_key().decode())

DISTRICT, STREET, COMMUNITY = "420103000000", "420103001000", "420103001001"
G1 = box(114.00, 30.00, 114.01, 30.01)
G2 = box(114.01, 30.00, 114.02, 30.01)


def make_home(prefix: str = "gg-") -> Path:
    # Short path (the Unix socket path must stay under 108 bytes) that the postgres user can
    # traverse when tests run as root (pytest's tmp_path is 0700).
    home = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(home, 0o755)
    return home


@pytest.fixture(scope="session")
def cluster_home():
    home = make_home()
    yield home
    Cluster(home / "h").stop()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def settings(cluster_home) -> Settings:
    return Settings(home=cluster_home / "h", pg_fast=True)


@pytest.fixture(scope="session")
def db_url(settings) -> str:
    cluster = Cluster(settings.home, fast=True)
    cluster.start()
    return cluster.url()


@pytest.fixture(scope="session")
def engine(db_url):
    eng = make_engine(db_url)
    migrate.upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def session(engine):
    """A session whose every commit is a savepoint of an outer transaction rolled back at the end."""
    with engine.connect() as conn:
        outer = conn.begin()
        s = Session(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)
        try:
            yield s
        finally:
            s.close()
            outer.rollback()


@pytest.fixture
def two_grids(session):
    """One district, street and community, and the 2×2 km… (well, 2 cells) grid of the docstring."""
    from gisgrid.layers import writes

    community = box(114.00, 30.00, 114.02, 30.01)
    district = box(113.99, 29.99, 114.03, 30.02)
    writes.add(session, "admin_area", [{"code": DISTRICT, "name": "测试区", "geometry": district}])
    writes.add(session, "admin_area", [{"code": STREET, "name": "测试街道", "geometry": community}])
    writes.add(session, "admin_area", [{"code": COMMUNITY, "name": "测试社区", "geometry": community}])
    writes.add(session, "grid", [{"code": COMMUNITY + "001", "name": "一网格", "geometry": G1},
                                 {"code": COMMUNITY + "002", "name": "二网格", "geometry": G2}])
    return session


def create_database(db_url: str, name: str) -> str:
    """A fresh database in the test cluster; returns its URL."""
    import psycopg

    host = db_url.split("host=")[1]
    with psycopg.connect(host=host, user="postgres", dbname="postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return db_url.replace("/gisgrid?", f"/{name}?")


@pytest.fixture(scope="session")
def demo_url(db_url, settings) -> str:
    """A database holding the migrated demo district, committed (for the app, CLI and browser)."""
    from gisgrid.cli import load_demo
    from gisgrid.db.engine import make_sessionmaker

    from gisgrid.cli import demo_accounts

    url = create_database(db_url, "gisgrid_demo")
    eng = make_engine(url)
    Session = make_sessionmaker(eng)
    assert load_demo(Session, eng) is True
    demo_accounts(Session, settings.home)
    eng.dispose()
    return url


@pytest.fixture(scope="session")
def app(demo_url, settings):
    from gisgrid.web import create_app

    app = create_app({"database_url": demo_url, "home": settings.home, "login_limit": "1000 per minute"})
    yield app
    app.extensions["gisgrid"]["engine"].dispose()


@pytest.fixture
def anonymous(app):
    return app.test_client()


def login_as(app, username: str):
    """A test client with a session for ``username`` (as after a real login)."""
    from gisgrid.layers import users

    c = app.test_client()
    with app.extensions["gisgrid"]["sessions"]() as s:
        u = users.get(s, username)
        uid, sv = u.id, u.session_version
    with c.session_transaction() as sess:
        sess["uid"], sess["sv"] = uid, sv
    return c


@pytest.fixture
def client(app):
    """Logged in as the demo admin."""
    return login_as(app, "admin")


@pytest.fixture
def demo_passwords(settings) -> dict[str, str]:
    path = settings.home / "demo-accounts.txt"
    return dict(line.split("\t", 1) for line in path.read_text().splitlines())


def gisgrid_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GISGRID_")}
    env.update(extra)
    return env
