"""Backup → restore round trip through the real CLI, and a bad archive changes nothing."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from conftest import create_database, gisgrid_env

GISGRID = str(Path(sys.executable).parent / "gisgrid")
TABLES = ("admin_area", "grid", "building", "resident", "incident", "incident_event", "staff", "grid_assignment",
          "place", "patrol_point", "patrol_route", "road", "app_user", "audit_log")


def fingerprint(url: str) -> dict[str, str]:
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as c:
        return {t: c.execute(f"SELECT count(*) || ':' || coalesce(md5(string_agg(x::text, '|' ORDER BY x.id)), '') "
                             f"FROM {t} x").fetchone()[0] for t in TABLES}


def cli(url, *args):
    return subprocess.run([GISGRID, *args], capture_output=True, text=True, timeout=300,
                          env=gisgrid_env(GISGRID_DATABASE_URL=url))


def test_round_trip(demo_url, db_url, tmp_path):
    archive = tmp_path / "gisgrid.backup"
    r = cli(demo_url, "backup", str(archive))
    assert r.returncode == 0, r.stderr
    assert archive.read_bytes()[:5] == b"PGDMP" and not list(tmp_path.glob("*.partial"))
    target = create_database(db_url, "gisgrid_restored")
    r = cli(target, "restore", "--yes", str(archive))
    assert r.returncode == 0, r.stderr
    before = fingerprint(demo_url)
    assert fingerprint(target) == before
    assert int(before["resident"].split(":")[0]) >= 10_000
    # restoring over a database that already has the data replaces it, and still matches
    assert cli(target, "restore", "--yes", str(archive)).returncode == 0
    assert fingerprint(target) == before


@pytest.mark.parametrize("content, message", [
    (b"not a backup at all", "is not a gisgrid backup"),
    (b"PGDMP" + b"\0" * 50, "pg_restore failed, nothing was changed"),
])
def test_bad_archive_changes_nothing(demo_url, db_url, tmp_path, content, message):
    target = create_database(db_url, "gisgrid_restore_bad")
    good = tmp_path / "good.backup"
    assert cli(demo_url, "backup", str(good)).returncode == 0
    assert cli(target, "restore", "--yes", str(good)).returncode == 0
    before = fingerprint(target)
    bad = tmp_path / "bad.backup"
    bad.write_bytes(content)
    r = cli(target, "restore", "--yes", str(bad))
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert fingerprint(target) == before
