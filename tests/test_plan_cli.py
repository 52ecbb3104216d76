"""`gisgrid plan …` through the real CLI against the demo database."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg

from conftest import gisgrid_env

GISGRID = str(Path(sys.executable).parent / "gisgrid")


def run(demo_url, *args):
    return subprocess.run([GISGRID, "plan", *args], env=gisgrid_env(GISGRID_DATABASE_URL=demo_url),
                          capture_output=True, text=True, timeout=300)


def test_propose_check_diff_discard(demo_url):
    with psycopg.connect(demo_url.replace("postgresql+psycopg", "postgresql")) as c:
        comm = c.execute("SELECT community_code FROM grid WHERE valid_to IS NULL ORDER BY code LIMIT 1").fetchone()[0]
        hh = c.execute("SELECT sum(b.households) FROM building b JOIN building_link l ON l.id = b.id WHERE l.community_code = %s", (comm,)).fetchone()[0]
    r = run(demo_url, "propose", "--scope", comm, "--target", "250", "--tolerance", "0.10", "--keep-current")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["proposal"]["households"] == hh and out["proposal"]["keep_current"] is True
    assert out["check"]["counts"]["gap"] == 0 and out["check"]["counts"]["overlap"] == 0
    assert out["check"]["counts"]["fragmented"] == 0
    pid = str(out["plan"])
    assert run(demo_url, "check", pid).returncode == 0
    d = json.loads(run(demo_url, "diff", pid).stdout)
    assert d["layers"]["building"]["count"] == out["proposal"]["households_moved"]
    assert json.loads(run(demo_url, "state", pid, "discard").stdout)["state"] == "discarded"


def test_bad_input_exits_2_naming_it(demo_url):
    r = run(demo_url, "propose", "--scope", "999999999999")
    assert r.returncode == 2 and "999999999999" in r.stderr
    r = run(demo_url, "propose", "--scope", "42010300")
    assert r.returncode == 2 and "12 digits" in r.stderr
    r = run(demo_url, "propose")
    assert r.returncode == 2 and "--scope" in r.stderr
    r = run(demo_url, "state", "999999", "publish")
    assert r.returncode == 2 and "no plan 999999" in r.stderr
