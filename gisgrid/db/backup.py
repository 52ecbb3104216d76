"""Whole-database backup and restore with pg_dump / pg_restore (custom format).

Everything gisgrid keeps is in the database (photos included, as rows), so one archive is a
complete backup. Restore replaces the target database's objects in one transaction: a bad
archive leaves the database as it was.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from sqlalchemy.engine import make_url

from gisgrid.errors import GisgridError, InvalidInput

MAGIC = b"PGDMP"


def _tool(name: str, bindir: str = "") -> str:
    from gisgrid.db.cluster import find_bindir

    try:
        return str(find_bindir(bindir) / name)
    except GisgridError:
        found = shutil.which(name)
        if not found:
            raise GisgridError(f"{name} not found: install postgresql-client-15") from None
        return found


def libpq_args(url: str) -> list[str]:
    """pg_dump/pg_restore connection arguments for a SQLAlchemy URL (no password on the
    command line: it goes through PGPASSWORD)."""
    u = make_url(url)
    args = ["-d", u.database or "postgres"]
    host = u.query.get("host") or u.host
    if host:
        args += ["-h", host if isinstance(host, str) else host[0]]
    if u.port:
        args += ["-p", str(u.port)]
    if u.username:
        args += ["-U", u.username]
    return args


def _env(url: str) -> dict:
    import os

    env = dict(os.environ)
    pw = make_url(url).password
    if pw:
        env["PGPASSWORD"] = pw
    return env


def backup(url: str, path: Path, bindir: str = "") -> int:
    """Write a custom-format archive of the whole database to ``path``; returns its size."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".partial")
    r = subprocess.run([_tool("pg_dump", bindir), "-Fc", "-Z", "6", "-f", str(tmp), *libpq_args(url)],
                       capture_output=True, text=True, env=_env(url))
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise GisgridError(f"pg_dump failed: {r.stderr.strip()}")
    tmp.replace(path)           # never a half-written backup under the final name
    return path.stat().st_size


def restore(url: str, path: Path, bindir: str = "") -> None:
    """Restore an archive made by :func:`backup` into the database at ``url``, in one transaction."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(5)
    except OSError as e:
        raise InvalidInput(f"cannot read backup {path}: {e.strerror}", field="path") from e
    if head != MAGIC:
        raise InvalidInput(f"{path.name} is not a gisgrid backup (pg_dump custom-format archive)", field="path")
    r = subprocess.run([_tool("pg_restore", bindir), "--clean", "--if-exists", "--no-owner", "--single-transaction",
                        "--exit-on-error", *libpq_args(url), str(path)], capture_output=True, text=True, env=_env(url))
    if r.returncode != 0:
        raise GisgridError(f"pg_restore failed, nothing was changed: {r.stderr.strip()[-2000:]}")
