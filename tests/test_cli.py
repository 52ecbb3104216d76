"""The real CLI against the demo database."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyrosm
import pytest

from conftest import create_database, gisgrid_env

GISGRID = str(Path(sys.executable).parent / "gisgrid")
KOTKA = Path(pyrosm.__file__).parent / "data" / "test.osm.pbf"


def run(url, *args, home=None):
    env = gisgrid_env(GISGRID_DATABASE_URL=url, **({"GISGRID_HOME": str(home)} if home else {}))
    return subprocess.run([GISGRID, *args], capture_output=True, text=True, timeout=300, env=env)


def test_link_reports_nothing_changed_on_linked_data(demo_url):
    r = run(demo_url, "link")
    assert r.returncode == 0, r.stderr
    assert "incident: 0 changed" in r.stdout and "building: 0 changed" in r.stdout


def test_demo_is_idempotent(demo_url):
    r = run(demo_url, "demo", "--no-serve")
    assert r.returncode == 0, r.stderr
    assert "already loaded" in r.stdout


def test_generate_refuses_to_mix_datasets(demo_url):
    r = run(demo_url, "generate", "--scale", "demo")
    assert r.returncode == 2
    assert "already holds grids" in r.stderr and "--replace" in r.stderr
    assert "Traceback" not in r.stderr


def test_import_osm_kotka(db_url):
    url = create_database(db_url, "gisgrid_osm")
    assert run(url, "db", "upgrade").returncode == 0
    r = run(url, "import-osm", str(KOTKA))
    assert r.returncode == 0, r.stderr
    # Kotka has 2,208 building ways; 23 are invalid polygons: repaired where make_valid leaves a
    # polygon, counted as skipped (never stored) where it collapses to lines.
    counts = dict(line.split(": ") for line in r.stdout.split("\n") if ": " in line)
    assert int(counts["buildings"].replace(",", "")) + int(counts["skipped"]) == 2208 + 0
    assert counts["roads"] == "331" and counts["repaired"] == "23"
    stored = int(counts["buildings"].replace(",", ""))
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as c:
        assert c.execute("SELECT count(*) FROM building WHERE source = 'osm' AND ST_IsValid(geom)").fetchone()[0] == stored
        # no grids there: every building kept, unlinked
        assert c.execute("SELECT count(*) FROM building NATURAL LEFT JOIN building_link WHERE grid_id IS NULL").fetchone()[0] == stored


@pytest.mark.parametrize("args, message", [
    (["import-osm", "/nonexistent.osm.pbf"], "does not exist"),
    (["import-osm", __file__], "expected an .osm.pbf file"),
])
def test_bad_cli_input_is_a_message_not_a_traceback(demo_url, args, message):
    r = run(demo_url, *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
