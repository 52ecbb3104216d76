"""``gisgrid`` command line. Errors are printed as one message and a non-zero exit."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from datetime import date

import click

from gisgrid import config
from gisgrid.errors import GisgridError


def _settings():
    return config.load()


def _actor() -> str:
    import getpass

    return f"cli:{getpass.getuser()}"


def _demo_pii_key(settings) -> None:
    """The demo (and generated benchmark data) keep a PII key in $GISGRID_HOME/pii.key when the
    environment gives none. Outside `demo`/`generate` a missing key is an error."""
    import os

    from gisgrid import pii

    if os.environ.get("GISGRID_PII_KEY") or os.environ.get("GISGRID_PII_KEY_FILE"):
        return
    path = settings.home / "pii.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(pii.new_key())
        click.echo(f"created a key for personal data at {path} (demo only: set GISGRID_PII_KEY in production)",
                   err=True)
    os.environ["GISGRID_PII_KEY_FILE"] = str(path)


@contextmanager
def _session(start: bool = True):
    from gisgrid.db.engine import database_url, make_engine, make_sessionmaker

    engine = make_engine(database_url(_settings(), start=start))
    try:
        yield engine, make_sessionmaker(engine)
    finally:
        engine.dispose()


class _Progress:
    """tqdm bars for the steps of a long job (on stderr, so stdout stays parseable)."""

    def __init__(self, desc: str, total: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=True)

    def __call__(self, what: str, n: int) -> None:
        self.bar.set_postfix_str(f"{what}: {n:,}")
        self.bar.update(1)

    def close(self):
        self.bar.close()


@click.group()
def main():
    """gisgrid – grid-mapping for community governance (网格化管理)."""


# -- db ---------------------------------------------------------------------------------------
@main.group()
def db():
    """The database: embedded cluster control and migrations."""


def _embedded_or_exit():
    s = _settings()
    if not s.embedded:
        raise click.ClickException("GISGRID_DATABASE_URL is set: gisgrid does not manage that server's cluster")
    from gisgrid.db.engine import cluster_for

    return cluster_for(s)


@db.command("start")
def db_start():
    """Start the embedded PostGIS cluster (initialised on first use; idempotent)."""
    c = _embedded_or_exit()
    c.start()
    click.echo(f"running: {c.url()}")


@db.command("stop")
def db_stop():
    c = _embedded_or_exit()
    c.stop()
    click.echo("stopped")


@db.command("status")
def db_status():
    """Print running / stopped / absent (exit 0 only when running)."""
    c = _embedded_or_exit()
    st = c.status()
    click.echo(st)
    sys.exit(0 if st == "running" else 3)


@db.command("url")
def db_url():
    """Print the database URL (starts the embedded cluster if needed)."""
    from gisgrid.db.engine import database_url

    click.echo(database_url(_settings()))


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision):
    """Apply migrations up to REVISION (default head)."""
    from gisgrid.db import migrate

    with _session() as (engine, _):
        migrate.upgrade(engine, revision)
        click.echo(f"at revision {migrate.current(engine)}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision):
    """Revert migrations down to REVISION (``base`` drops every table)."""
    from gisgrid.db import migrate

    with _session() as (engine, _):
        migrate.downgrade(engine, revision)
        click.echo(f"at revision {migrate.current(engine)}")


# -- data -------------------------------------------------------------------------------------
@main.command()
@click.option("-v", "--verbose", is_flag=True, help="print how long each step of each layer took")
def link(verbose):
    """Recompute every record's grid/community/street/district links in bulk."""
    import logging

    from gisgrid.layers import linking

    if verbose:
        logging.basicConfig(format="%(message)s")
        linking.log.setLevel(logging.INFO)
    with _session() as (engine, Session):
        t0 = time.perf_counter()
        with Session.begin() as s:
            changed = linking.relink(s)
        for t, n in changed.items():
            click.echo(f"{t}: {n} changed")
        click.echo(f"linked in {time.perf_counter() - t0:.2f} s")


def _parse_until(value):
    return date.fromisoformat(value) if value else None


@main.command()
@click.option("--scale", type=click.Choice(["demo", "district", "city"]), default="demo", show_default=True)
@click.option("--seed", type=int, default=20261122, show_default=True)
@click.option("--until", help="last day of the generated year of incidents (default today)")
@click.option("--replace", is_flag=True, help="empty every layer table first")
def generate(scale, seed, until, replace):
    """Generate and load a dataset (deterministic by seed)."""
    from gisgrid import generate as gen
    from gisgrid.db import migrate

    _demo_pii_key(_settings())
    with _session() as (engine, Session):
        migrate.upgrade(engine)
        bar = _Progress(f"generate {scale}", 8)
        frames = gen.build(scale, seed=seed, until=_parse_until(until), progress=bar)
        bar.close()
        bar = _Progress(f"load {scale}", len(frames) + 1)
        with Session.begin() as s:
            counts = gen.load(s, frames, replace=replace, progress=bar, actor=_actor())
        bar.close()
    for t, n in counts.items():
        click.echo(f"{t}: {n:,}")


def load_demo(Session, engine, actor: str = "demo") -> bool:
    """Migrate and load the demo district unless it is there. True if it was loaded now."""
    from sqlalchemy import text

    from gisgrid import generate as gen
    from gisgrid.db import migrate

    migrate.upgrade(engine)
    with Session.begin() as s:
        if gen.is_loaded(s):
            return False
        s.execute(text("SELECT pg_advisory_xact_lock(20261122)"))
        if gen.is_loaded(s):
            return False
        gen.load(s, gen.build("demo"), actor=actor)
    return True


#: one demo account per role, on the demo district (jurisdiction filled in by demo_accounts)
DEMO_ACCOUNTS = (("admin", "admin"), ("commander", "commander"), ("planner", "planner"),
                 ("community", "field"), ("gridworker", "field"), ("viewer", "viewer"))


def demo_accounts(Session, home) -> list[tuple[str, str, str, list[str]]]:
    """Ensure the demo accounts exist; their passwords are random, kept in
    ``$GISGRID_HOME/demo-accounts.txt`` (mode 0600) so every `make demo` can print them."""
    import os
    import secrets

    from sqlalchemy import text

    from gisgrid.layers import users

    path = home / "demo-accounts.txt"
    saved = dict(line.split("\t", 1) for line in path.read_text().splitlines() if "\t" in line) \
        if path.exists() else {}
    out = []
    with Session.begin() as s:
        district = s.execute(text("SELECT code FROM admin_area WHERE level = 'district' ORDER BY code LIMIT 1")).scalar()
        first_grid = s.execute(text("SELECT code, community_code, street_code FROM grid WHERE valid_to IS NULL "
                                    "ORDER BY code LIMIT 1")).one()
        where = {"admin": [], "commander": [district], "planner": [district], "community": [first_grid.community_code],
                 "gridworker": [first_grid.code], "viewer": [first_grid.street_code]}
        for username, role in DEMO_ACCOUNTS:
            password = saved.get(username) or secrets.token_urlsafe(9)
            existing = s.execute(text("SELECT id FROM app_user WHERE username = :u"), {"u": username}).scalar()
            if existing is None:
                users.add(s, username, role, where[username], password, display_name=f"演示-{users.ROLES[role]}")
            elif username not in saved:
                users.set_password(s, users.get(s, username), password)
            saved[username] = password
            out.append((username, role, password, where[username]))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("".join(f"{u}\t{p}\n" for u, p in saved.items()))
    return out


@main.command()
@click.option("--no-serve", is_flag=True, help="load only")
def demo(no_serve):
    """Load the demo district (idempotent), make one account per role, and serve the app."""
    settings = _settings()
    _demo_pii_key(settings)
    with _session() as (engine, Session):
        t0 = time.perf_counter()
        loaded = load_demo(Session, engine)
        click.echo(("demo district loaded" if loaded else "demo district already loaded")
                   + f" ({time.perf_counter() - t0:.1f} s)")
        click.echo("demo accounts (username / password / role / jurisdiction):")
        for username, role, password, where in demo_accounts(Session, settings.home):
            click.echo(f"  {username:<11} {password:<14} {role:<10} {','.join(where) or 'everything'}")
    if not no_serve:
        _serve(_settings())


@main.command("import-osm")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def import_osm(path):
    """Load the buildings and roads of an OSM .pbf extract (pyrosm)."""
    from gisgrid import osm

    with _session() as (engine, Session):
        from gisgrid.db import migrate

        migrate.upgrade(engine)
        with Session.begin() as s:
            counts = osm.import_pbf(s, path, actor=_actor())
    for t, n in counts.items():
        click.echo(f"{t}: {n:,}")


def _serve(settings):
    """gunicorn: ``settings.workers`` processes (default cores + 1, so Python's one-core-per-
    process limit does not cap the service) of ``settings.threads`` threads each. Each worker
    builds its own app (engine and pool) after the fork; the embedded cluster is started once,
    here, before any worker exists."""
    import os

    from gunicorn.app.base import BaseApplication

    from gisgrid.db.engine import database_url

    database_url(settings)
    workers = settings.workers or (os.cpu_count() or 1) + 1

    class Gisgrid(BaseApplication):
        def load_config(self):
            for k, v in {"bind": f"{settings.host}:{settings.port}", "workers": workers,
                         "worker_class": "gthread", "threads": settings.threads, "timeout": 60,
                         "graceful_timeout": 10, "keepalive": 5, "proc_name": "gisgrid", "accesslog": None,
                         "errorlog": "-", "loglevel": "warning"}.items():
                self.cfg.set(k, v)

        def load(self):
            from gisgrid.web import create_app

            return create_app()

    url = f"http://{settings.host}:{settings.port}/"
    click.echo(f"gisgrid serving at {url} ({workers} workers × {settings.threads} threads)", err=False)
    sys.stdout.flush()
    Gisgrid().run()


@main.command()
def serve():
    """Serve the web app (starts the embedded cluster if needed)."""
    _serve(_settings())


@main.command()
@click.argument("path", type=click.Path(dir_okay=False))
def backup(path):
    """Write the whole database (every layer, accounts, audit log, photos) to PATH."""
    from pathlib import Path

    from gisgrid.db import backup as b
    from gisgrid.db.engine import database_url

    s = _settings()
    size = b.backup(database_url(s), Path(path), s.pg_bindir)
    click.echo(f"backup written to {path} ({size / 1e6:.1f} MB)")


@main.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--yes", is_flag=True, help="do not ask before replacing the database's contents")
def restore(path, yes):
    """Replace the database's contents with a backup made by `gisgrid backup`."""
    from pathlib import Path

    from gisgrid.db import backup as b
    from gisgrid.db.engine import database_url

    if not yes and not click.confirm("replace every table of the database with the backup?"):
        raise click.Abort()
    s = _settings()
    b.restore(database_url(s), Path(path), s.pg_bindir)
    click.echo(f"restored from {path}")


# -- accounts ---------------------------------------------------------------------------------
@main.group()
def user():
    """Accounts: add, list, passwd, disable, enable, and API tokens."""


def _password_from(stdin: bool) -> str:
    if stdin:
        return sys.stdin.readline().rstrip("\n")
    return click.prompt("password", hide_input=True, confirmation_prompt=True)


@user.command("add")
@click.argument("username")
@click.option("--role", type=click.Choice(["admin", "commander", "planner", "field", "viewer"]), required=True)
@click.option("--area", "areas", multiple=True, help="admin area or grid code of the jurisdiction (repeat)")
@click.option("--name", "display_name")
@click.option("--password-stdin", is_flag=True, help="read the password from standard input")
def user_add(username, role, areas, display_name, password_stdin):
    """Create an account. There are no default passwords: give one."""
    from gisgrid.layers import audit, users

    password = _password_from(password_stdin)
    with _session() as (_, Session):
        with Session.begin() as s:
            u = users.add(s, username, role, list(areas), password, display_name)
            audit.record(s, _actor(), "create", "user", u.id,
                         after={"username": username, "role": role, "jurisdiction": list(u.jurisdiction)})
    click.echo(f"user {username} ({role}) created")


@user.command("list")
def user_list():
    from sqlalchemy import select

    from gisgrid.layers import users

    with _session() as (_, Session):
        with Session() as s:
            for u in s.scalars(select(users.User).order_by(users.User.username)):
                click.echo(f"{u.username}\t{u.role}\t{'active' if u.active else 'disabled'}\t{','.join(u.jurisdiction)}")


@user.command("passwd")
@click.argument("username")
@click.option("--password-stdin", is_flag=True)
def user_passwd(username, password_stdin):
    """Set a new password (ends the user's sessions)."""
    from gisgrid.layers import audit, users

    password = _password_from(password_stdin)
    with _session() as (_, Session):
        with Session.begin() as s:
            u = users.get(s, username)
            users.set_password(s, u, password)
            audit.record(s, _actor(), "passwd", "user", u.id)
    click.echo(f"password of {username} changed")


@user.command("disable")
@click.argument("username")
def user_disable(username):
    """Disable an account (ends its sessions; its tokens stop working)."""
    _set_active(username, False)


@user.command("enable")
@click.argument("username")
def user_enable(username):
    _set_active(username, True)


def _set_active(username, active):
    from gisgrid.layers import audit, users

    with _session() as (_, Session):
        with Session.begin() as s:
            u = users.get(s, username)
            users.set_active(s, u, active)
            audit.record(s, _actor(), "enable" if active else "disable", "user", u.id)
    click.echo(f"{username} {'enabled' if active else 'disabled'}")


@user.group("token")
def token():
    """API tokens for devices and integrations."""


@token.command("create")
@click.argument("username")
@click.option("--name", required=True, help="what the token is for")
@click.option("--scope", "scopes", multiple=True, required=True, help="action it may perform (repeat)")
@click.option("--days", type=int, default=365, show_default=True, help="lifetime; 0 = no expiry")
def token_create(username, name, scopes, days):
    """Create a token; it is printed once and stored only as a hash."""
    from gisgrid.layers import audit, users

    with _session() as (_, Session):
        with Session.begin() as s:
            u = users.get(s, username)
            plain, row = users.create_token(s, u, name, list(scopes), days or None)
            audit.record(s, _actor(), "create", "api_token", row.id, after={"user": username, "scopes": row.scopes})
    click.echo(plain)


@token.command("list")
@click.argument("username")
def token_list(username):
    from sqlalchemy import select

    from gisgrid.layers import users

    with _session() as (_, Session):
        with Session() as s:
            u = users.get(s, username)
            for t in s.scalars(select(users.ApiToken).where(users.ApiToken.user_id == u.id).order_by(users.ApiToken.id)):
                state = "revoked" if t.revoked_at else "active"
                expires = f"expires {t.expires_at:%Y-%m-%d}" if t.expires_at else "no expiry"
                click.echo(f"{t.id}\t{t.prefix}…\t{t.name}\t{','.join(t.scopes)}\t{state}\t{expires}")


@token.command("revoke")
@click.argument("token_id", type=int)
def token_revoke(token_id):
    from gisgrid.layers import audit, users

    with _session() as (_, Session):
        with Session.begin() as s:
            users.revoke_token(s, token_id)
            audit.record(s, _actor(), "revoke", "api_token", token_id)
    click.echo(f"token {token_id} revoked")


# -- audit ------------------------------------------------------------------------------------
@main.command("audit")
@click.option("--actor")
@click.option("--entity")
@click.option("--action")
@click.option("--since", help="ISO date or time")
@click.option("--until", help="ISO date or time")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def audit_cmd(actor, entity, action, since, until, limit, as_json):
    """List the audit log, newest first."""
    import json
    from datetime import datetime

    from gisgrid.errors import InvalidInput
    from gisgrid.layers import audit

    def when(v, name):
        if v is None:
            return None
        try:
            return datetime.fromisoformat(v)
        except ValueError:
            raise InvalidInput(f"--{name} must be an ISO date or time, got {v!r}", field=name) from None

    with _session() as (_, Session):
        with Session() as s:
            rows = audit.query(s, actor=actor, entity=entity, action=action, since=when(since, "since"),
                               until=when(until, "until"), limit=limit)
    for r in rows:
        if as_json:
            click.echo(json.dumps({"id": r.id, "at": r.at.isoformat(), "actor": r.actor, "action": r.action,
                                   "entity": r.entity, "entity_id": r.entity_id, "before": r.before,
                                   "after": r.after, "reason": r.reason}, ensure_ascii=False))
        else:
            click.echo(f"{r.at:%Y-%m-%d %H:%M:%S}\t{r.actor or '-'}\t{r.action}\t{r.entity}:{r.entity_id or '-'}"
                       + (f"\t{r.reason}" if r.reason else ""))


def run():
    import psycopg
    from sqlalchemy.exc import DBAPIError

    from gisgrid.db.errors import translate

    try:
        main(standalone_mode=True)
    except GisgridError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except DBAPIError as e:
        click.echo(f"error: {translate(e)}", err=True)
        sys.exit(2)
    except psycopg.Error as e:   # raw COPY paths
        click.echo(f"error: database refused the data: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    run()
