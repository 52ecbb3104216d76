"""The embedded cluster through the real CLI: idempotent start, crash recovery, concurrent
starts, and a set URL that never touches a local cluster."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from gisgrid.db.cluster import Cluster

from conftest import gisgrid_env, make_home

GISGRID = str(Path(sys.executable).parent / "gisgrid")


def cli(home: Path, *args, **env):
    return subprocess.run([GISGRID, *args], capture_output=True, text=True, timeout=180,
                          env=gisgrid_env(GISGRID_HOME=str(home), GISGRID_PG_FAST="1", **env))


@pytest.fixture
def home():
    h = make_home("ggc-")
    yield h / "c"
    Cluster(h / "c").stop()
    shutil.rmtree(h, ignore_errors=True)


def healthy(home: Path) -> bool:
    with psycopg.connect(host=str(home / "run"), user="postgres", dbname="gisgrid", connect_timeout=5) as c:
        return c.execute("SELECT postgis_lib_version() IS NOT NULL").fetchone()[0]


def test_start_is_idempotent_and_socket_only(home):
    assert cli(home, "db", "status").stdout.strip() == "absent"
    first = cli(home, "db", "start")
    assert first.returncode == 0, first.stderr
    pid = Cluster(home).postmaster_pid()
    again = cli(home, "db", "start")
    assert again.returncode == 0 and Cluster(home).postmaster_pid() == pid   # same server, not restarted
    assert cli(home, "db", "status").stdout.strip() == "running"
    assert healthy(home)
    with psycopg.connect(host=str(home / "run"), user="postgres", dbname="gisgrid") as c:
        assert c.execute("SHOW listen_addresses").fetchone()[0] == ""        # no TCP
    assert cli(home, "db", "url").stdout.strip().endswith(f"host={home / 'run'}")
    assert cli(home, "db", "stop").returncode == 0
    st = cli(home, "db", "status")
    assert st.stdout.strip() == "stopped" and st.returncode == 3


def test_stale_pid_after_kill_9_is_recovered(home):
    assert cli(home, "db", "start").returncode == 0
    pid = Cluster(home).postmaster_pid()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (home / "pgdata" / "postmaster.pid").exists()          # the stale lock is left behind
    r = cli(home, "db", "start")
    assert r.returncode == 0, r.stderr
    assert Cluster(home).postmaster_pid() != pid and healthy(home)


def test_two_concurrent_starts_end_with_one_healthy_cluster(home):
    env = gisgrid_env(GISGRID_HOME=str(home), GISGRID_PG_FAST="1")
    procs = [subprocess.Popen([GISGRID, "db", "start"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert healthy(home)
    postmasters = subprocess.run(["pgrep", "-f", f"postgres -D {home / 'pgdata'}"], capture_output=True, text=True)
    assert len(postmasters.stdout.split()) == 1


def test_set_url_never_touches_a_local_cluster(db_url, tmp_path):
    home = tmp_path / "untouched"
    r = cli(home, "db", "url", GISGRID_DATABASE_URL=db_url)
    assert r.returncode == 0 and r.stdout.strip() == db_url
    assert not home.exists()
    r = cli(home, "db", "start", GISGRID_DATABASE_URL=db_url)
    assert r.returncode != 0 and "GISGRID_DATABASE_URL is set" in r.stderr
    assert not home.exists()
