"""The embedded PostgreSQL + PostGIS cluster gisgrid runs when no database URL is set.

Layout under ``home`` (``$GISGRID_HOME``, default ``./.gisgrid``)::

    pgdata/        the cluster (initdb), owned by the user that runs postgres
    run/           the Unix socket (no TCP: listen_addresses = '')
    log/postgres.log
    cluster.lock   flock held while initialising or starting, so concurrent starts are serial

PostgreSQL refuses to run as root; when gisgrid runs as root the cluster runs as the
``postgres`` system user (created by Debian's ``postgresql-common``) through ``runuser``.
"""
from __future__ import annotations

import fcntl
import glob
import os
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from gisgrid.errors import ClusterError

DBNAME = "gisgrid"
SUPERUSER = "postgres"
_SOCKET_MAX = 107  # sun_path limit on Linux


def find_bindir(hint: str = "") -> Path:
    """Where initdb/pg_ctl live: ``hint``, else the newest ``/usr/lib/postgresql/*/bin``, else PATH."""
    candidates = [hint] if hint else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    for c in candidates:
        if c and (Path(c) / "pg_ctl").exists():
            return Path(c)
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    raise ClusterError(
        "PostgreSQL server binaries (pg_ctl, initdb) not found; install them with "
        "`apt-get install postgresql-15 postgresql-15-postgis-3` or set GISGRID_PG_BINDIR"
    )


#: One node, no replicas, backups by pg_dump: WAL only for crash recovery. With wal_level =
#: minimal, a table created and filled in one transaction (a bulk re-link's new link table, a
#: restore) and its indexes are written without WAL. Point-in-time recovery and streaming
#: replication need 'replica': use an external server (GISGRID_DATABASE_URL) for those.
WAL_CONF = ["wal_level = minimal", "max_wal_senders = 0"]

class Cluster:
    """One embedded cluster. Methods are idempotent and safe to call from several processes."""

    def __init__(self, home: Path, bindir: str = "", fast: bool = False):
        self.home = Path(home).absolute()
        self.pgdata = self.home / "pgdata"
        self.rundir = self.home / "run"
        self.logfile = self.home / "log" / "postgres.log"
        self._bindir_hint = bindir
        self.fast = fast
        self.as_root = os.geteuid() == 0

    # -- public ---------------------------------------------------------------------------
    def url(self) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@/{DBNAME}?host={self.rundir}"

    def is_initialised(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    def is_running(self) -> bool:
        if not self.is_initialised():
            return False
        r = self._pg("pg_isready", "-q", "-h", str(self.rundir), "-d", "postgres", "-U", SUPERUSER, check=False)
        return r.returncode == 0

    def status(self) -> str:
        if not self.is_initialised():
            return "absent"
        return "running" if self.is_running() else "stopped"

    def start(self, timeout: float = 60.0) -> None:
        """Initialise if needed, start if not running, create the database and PostGIS."""
        with self._lock():
            if not self.is_initialised():
                self._initdb()
            if not self.is_running():
                self._upgrade_conf()
                self._start(timeout)
            self._ensure_database()

    def stop(self) -> None:
        with self._lock():
            if self.is_initialised() and self._pg("pg_ctl", "status", "-D", str(self.pgdata), check=False).returncode == 0:
                self._pg("pg_ctl", "stop", "-D", str(self.pgdata), "-m", "fast", "-w", "-t", "60")

    def postmaster_pid(self) -> int | None:
        pidfile = self.pgdata / "postmaster.pid"
        try:
            return int(pidfile.read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return None

    # -- helpers --------------------------------------------------------------------------
    @contextmanager
    def _lock(self):
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / "cluster.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _pg(self, tool: str, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(find_bindir(self._bindir_hint) / tool), *args]
        if self.as_root:
            cmd = ["runuser", "-u", SUPERUSER, "--", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd="/")
        if check and r.returncode != 0:
            raise ClusterError(f"{tool} failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
        return r

    def _owned_dir(self, path: Path, mode: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if self.as_root:
            shutil.chown(path, SUPERUSER, SUPERUSER)
        os.chmod(path, mode)

    def _initdb(self) -> None:
        sock = self.rundir / ".s.PGSQL.5432"
        if len(str(sock)) > _SOCKET_MAX:
            raise ClusterError(f"GISGRID_HOME {self.home} is too long for a Unix socket path "
                               f"({len(str(sock))} > {_SOCKET_MAX} characters); choose a shorter one")
        if self.as_root:
            try:
                shutil.chown(self.home, SUPERUSER, SUPERUSER)
            except LookupError as e:
                raise ClusterError("running as root needs the 'postgres' system user "
                                   "(apt-get install postgresql-15)") from e
            os.chmod(self.home, 0o755)
            r = subprocess.run(["runuser", "-u", SUPERUSER, "--", "test", "-x", str(self.home)], check=False)
            if r.returncode != 0:
                raise ClusterError(f"the postgres user cannot reach {self.home}: make its parent folders "
                                   "traversable (chmod o+x) or set GISGRID_HOME elsewhere")
        self._owned_dir(self.pgdata, 0o700)
        self._owned_dir(self.rundir, 0o700)
        self._owned_dir(self.logfile.parent, 0o755)
        self._pg("initdb", "-D", str(self.pgdata), "-U", SUPERUSER, "--auth=trust",
                 "-E", "UTF8", "--locale=C.UTF-8", "--no-instructions")
        conf = [
            "listen_addresses = ''",
            f"unix_socket_directories = '{self.rundir}'",
            "unix_socket_permissions = 0700",
            "max_connections = 200",
            "shared_buffers = '512MB'",
            "work_mem = '64MB'",
            "maintenance_work_mem = '512MB'",
            "max_wal_size = '4GB'",
            "checkpoint_timeout = '15min'",
            "log_min_duration_statement = 2000",
            "timezone = 'UTC'",
        ] + WAL_CONF
        if self.fast:
            conf += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        with open(self.pgdata / "postgresql.auto.conf", "a") as fh:
            fh.write("# gisgrid embedded cluster\n" + "\n".join(conf) + "\n")

    def _upgrade_conf(self) -> None:
        """Add settings introduced after a cluster was made (read at its next start)."""
        auto = self.pgdata / "postgresql.auto.conf"
        text = auto.read_text()
        add = [] if "wal_level" in text else list(WAL_CONF)
        # a home copied or moved elsewhere (cp -a) still names the old home's socket folder: the
        # cluster would then listen there (clashing with the original's) and never here
        sockets = re.findall(r"^\s*unix_socket_directories\s*=\s*'([^']*)'", text, re.M)
        if sockets and sockets[-1] != str(self.rundir):
            add.append(f"unix_socket_directories = '{self.rundir}'")      # the last setting wins
            self._owned_dir(self.rundir, 0o700)
        if add:
            with open(auto, "a") as fh:
                fh.write("\n".join(add) + "\n")

    def _start(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            self._clear_stale_pidfile()
            r = self._pg("pg_ctl", "start", "-D", str(self.pgdata), "-l", str(self.logfile), "-w",
                         "-t", str(int(max(5, deadline - time.monotonic()))), check=False,
                         timeout=timeout + 30)
            if r.returncode == 0 and self.is_running():
                return
            last = (r.stderr or r.stdout).strip() + "\n" + self._log_tail()
            if time.monotonic() > deadline:
                raise ClusterError(f"embedded PostgreSQL did not start in {timeout:.0f}s: {last}")
            # After a kill -9 of the postmaster its children may still hold the shared memory
            # for a moment; they exit when they notice the postmaster is gone. Wait and retry.
            time.sleep(0.5)

    def _clear_stale_pidfile(self) -> None:
        pid = self.postmaster_pid()
        if pid is None:
            return
        try:
            os.kill(pid, 0)
            alive = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"postgres")
        except (ProcessLookupError, FileNotFoundError):
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            (self.pgdata / "postmaster.pid").unlink(missing_ok=True)

    def _log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def _ensure_database(self) -> None:
        import psycopg

        conninfo = dict(host=str(self.rundir), user=SUPERUSER, autocommit=True)
        with psycopg.connect(dbname="postgres", **conninfo) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DBNAME,)).fetchone():
                conn.execute(f'CREATE DATABASE "{DBNAME}"')
        with psycopg.connect(dbname=DBNAME, **conninfo) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
