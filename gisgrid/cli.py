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


@main.group()
def patrol():
    """Patrol points and routes: import, export, coverage."""


PATROL_LAYERS = ("points", "routes")


@patrol.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--layer", type=click.Choice(PATROL_LAYERS), default="points", show_default=True)
@click.option("--crs", help="CRS of the file when it declares none (default EPSG:4326)")
def patrol_import(path, layer, crs):
    """Import patrol points or routes from any file GDAL reads (GeoJSON, GeoPackage, Shapefile…),
    all or nothing. Properties: code, name, team (points also kind, radius_m, visits_per_day;
    routes also points = comma-separated point codes)."""
    import json

    import geopandas as gpd

    from gisgrid.errors import InvalidInput
    from gisgrid.layers import patrol as layer_mod

    try:
        gdf = gpd.read_file(path)
    except Exception as e:       # pyogrio/GDAL: any unreadable file is the caller's input
        raise InvalidInput(f"cannot read {path}: {e}", field="path") from None
    src = crs or (gdf.crs.to_string() if gdf.crs is not None else "EPSG:4326")
    fc = json.loads(gdf.to_json(na="drop", to_wgs84=False))
    for f in fc["features"]:
        f.pop("id", None)
        pts = f["properties"].get("points")
        if layer == "routes" and isinstance(pts, str):
            f["properties"]["points"] = [c.strip() for c in pts.split(",") if c.strip()]
        for k in ("visits_per_day",):
            if isinstance(f["properties"].get(k), float) and f["properties"][k].is_integer():
                f["properties"][k] = int(f["properties"][k])
    with _session() as (engine, Session):
        with Session.begin() as s:
            if layer == "points":
                codes = layer_mod.add_points(s, fc["features"], _actor(), crs=src)
            else:
                codes = layer_mod.add_routes(s, fc["features"], _actor(), ("TRUE", {}), crs=src)
    click.echo(f"patrol {layer}: {len(codes):,} imported")


@patrol.command("export")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--layer", type=click.Choice(PATROL_LAYERS), default="points", show_default=True)
def patrol_export(path, layer):
    """Write patrol points or routes to a file; the driver follows the suffix (.geojson, .gpkg,
    .shp, .csv with lon/lat columns)."""
    from pathlib import Path

    import geopandas as gpd

    from gisgrid.errors import InvalidInput
    from gisgrid.layers import patrol as layer_mod

    suffix = Path(path).suffix.lower()
    if suffix not in (".geojson", ".json", ".gpkg", ".shp", ".csv"):
        raise InvalidInput(f"unknown file type {suffix!r}; use .geojson, .gpkg, .shp or .csv", field="path")
    with _session() as (engine, Session):
        with Session() as s:
            read = layer_mod.point_features if layer == "points" else layer_mod.route_features
            fc = read(s, ("TRUE", {}), limit=10_000_000)
    for f in fc["features"]:
        if isinstance(f["properties"].get("points"), list):
            f["properties"]["points"] = ",".join(f["properties"]["points"])
    gdf = gpd.GeoDataFrame.from_features(fc["features"], crs="EPSG:4326")
    if suffix == ".csv":
        gdf = gdf.assign(lon=gdf.geometry.x, lat=gdf.geometry.y).drop(columns="geometry") if layer == "points" \
            else gdf.assign(wkt=gdf.geometry.to_wkt()).drop(columns="geometry")
        gdf.to_csv(path, index=False, encoding="utf-8-sig")
    else:
        gdf.to_file(path)
    click.echo(f"patrol {layer}: {len(gdf):,} written to {path}")


@patrol.command("coverage")
@click.option("--level", type=click.Choice(["grid", "community", "street", "district"]), default="community",
              show_default=True)
@click.option("--distance", type=float, default=300, show_default=True, help="metres")
@click.option("--method", type=click.Choice(["straight", "network"]), default="straight", show_default=True)
def patrol_coverage_cmd(level, distance, method):
    """Coverage per area as tab-separated lines: code, buildings, covered, households, covered."""
    from gisgrid.layers import patrol_coverage

    with _session() as (engine, Session):
        with Session() as s:
            rows = patrol_coverage.coverage(s, ("TRUE", {}), ("TRUE", {}), ("TRUE", {}), level=level,
                                            distance_m=distance, method=method, metric_crs=_settings().metric_crs)
    click.echo("code\tname\tpoints\tbuildings\tbuildings_covered\thouseholds\thouseholds_covered")
    for r in rows:
        click.echo(f"{r['code']}\t{r['name'] or ''}\t{r['points']}\t{r['buildings']}\t{r['buildings_covered']}\t"
                   f"{r['households']}\t{r['households_covered']}")


_LAYERS = click.Choice(["admin_area", "grid", "building", "resident", "place", "patrol_point", "patrol_route",
                        "road", "incident"])


def _mapping(pairs) -> dict[str, str]:
    from gisgrid.errors import InvalidInput

    out = {}
    for p in pairs:
        target, sep, column = p.partition("=")
        if not sep or not target.strip() or not column.strip():
            raise InvalidInput(f"--map must be field=column, got {p!r}", field="map")
        out[target.strip()] = column.strip()
    return out


@main.command("import")
@click.argument("layer", type=_LAYERS)
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--crs", help="CRS of the coordinates: EPSG:n (4326, 4490, a Gauss-Krüger zone…), gcj02 or bd09; "
                            "default: what the file declares, else EPSG:4326")
@click.option("--map", "pairs", multiple=True, metavar="FIELD=COLUMN", help="read FIELD from COLUMN (repeat)")
@click.option("--mode", type=click.Choice(["insert", "upsert", "replace"]), default="insert", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["geojson", "gpkg", "shp", "kml", "csv", "xlsx"]),
              help="when the suffix does not tell")
@click.option("--dry-run", is_flag=True, help="check everything, write nothing")
@click.option("--skip-invalid", is_flag=True, help="write the good rows; the report goes beside the file")
@click.option("--make-valid", is_flag=True, help="repair invalid polygons (the report says which)")
@click.option("--report", "report_path", type=click.Path(dir_okay=False),
              help="where to write the report (CSV); default FILE.report.csv when there are problems")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def import_cmd(layer, path, crs, pairs, mode, fmt, dry_run, skip_invalid, make_valid, report_path, as_json):
    """Import a layer file: all or nothing, every problem reported (row, field, value, reason).

    Exit 0 when written (or a clean dry run), 2 when nothing was written because of problems."""
    import json
    from pathlib import Path

    from gisgrid.db import migrate
    from gisgrid.io import importer

    mapping = _mapping(pairs)
    with _session() as (engine, Session):
        migrate.upgrade(engine)
        bar = _Progress(f"import {layer}", 6)
        try:
            with Session.begin() as s:
                rep = importer.run(s, layer, path, crs=crs, mapping=mapping, mode=mode, skip_invalid=skip_invalid,
                                   make_valid=make_valid, dry_run=dry_run, fmt=fmt, actor=_actor(), progress=bar)
        finally:
            bar.close()
    out = Path(report_path) if report_path else Path(str(path) + ".report.csv")
    if rep.problems or report_path:
        rep.write_csv(out)
    click.echo(json.dumps(rep.to_dict(), ensure_ascii=False, default=str) if as_json else rep.text())
    if rep.problems:
        click.echo(f"report: {out}", err=True)
    if not rep.written and not (dry_run and rep.ok):
        sys.exit(2)


@main.command("export")
@click.argument("layer", type=_LAYERS)
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["geojson", "gpkg", "shp", "csv", "xlsx"]),
              help="default: from the suffix (.geojson .gpkg .zip .csv .xlsx)")
@click.option("--crs", default="EPSG:4326", show_default=True, help="EPSG:4326, EPSG:4490, gcj02, bd09 or EPSG:n")
@click.option("--where", "where", multiple=True, metavar="area=CODE", help="only records of an admin area or grid")
@click.option("--unmask", "reason", metavar="REASON", help="residents: clear ID numbers and phones (audited)")
def export_cmd(layer, path, fmt, crs, where, reason):
    """Export a layer to a file (Chinese headers in CSV/XLSX)."""
    from gisgrid import authz
    from gisgrid.errors import InvalidInput
    from gisgrid.io import exporter

    area = None
    for w in where:
        key, sep, value = w.partition("=")
        if key.strip() != "area" or not sep:
            raise InvalidInput(f"--where takes area=CODE, got {w!r}", field="where")
        area = value.strip()
    who = authz.Principal(_actor(), "admin")
    with _session() as (engine, Session):
        bar = _Progress(f"export {layer}", 3)
        try:
            with Session.begin() as s:
                n = exporter.export(s, layer, path, fmt=fmt, crs=crs, principal=who, area=area,
                                    unmask=reason is not None, reason=reason, progress=bar)
        finally:
            bar.close()
    click.echo(f"{layer}: {n:,} records written to {path}")


def _serve(settings):
    """The web app under gisgrid.web.server (Granian). The embedded cluster is started once,
    here, before any worker exists."""
    from gisgrid.db.engine import database_url
    from gisgrid.web import server

    database_url(settings)
    url = f"http://{settings.host}:{settings.port}/"
    click.echo(f"gisgrid serving at {url} ({server.workers(settings)} workers × {settings.threads} threads)")
    sys.stdout.flush()
    server.serve(settings)


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


# -- plans ------------------------------------------------------------------------------------
@main.group()
def plan():
    """Grid plans: redraw a community's or street's grids, check, propose, publish (网格调整)."""


def _cli_principal():
    from gisgrid import authz

    return authz.Principal(_actor(), "admin")


def _plan_session(fn):
    """Run ``fn(session, principal)`` in one transaction and print its answer as JSON."""
    import json

    with _session() as (engine, Session):
        with Session.begin() as s:
            out = fn(s, _cli_principal())
    click.echo(json.dumps(out, ensure_ascii=False, indent=1, default=str))
    return out


def _brief(out: dict) -> dict:
    """Cells and check features are long: the CLI prints counts, codes and problems' messages."""
    out = dict(out)
    if "cells" in out:
        out["cells"] = [f["properties"] for f in out["cells"]]
    if isinstance(out.get("check"), dict):
        rep = dict(out["check"])
        rep["problems"] = [f["properties"]["message"] for f in rep.pop("features")["features"]]
        rep.pop("cells", None)
        out["check"] = rep
    return out


@plan.command("create")
@click.option("--scope", required=True, help="12-digit code of a community or a street")
@click.option("--name")
@click.option("--target", type=int, help="households per grid (default 250 urban, 150 rural)")
@click.option("--tolerance", type=float, default=0.10, show_default=True)
def plan_create(scope, name, target, tolerance):
    """Start a draft plan as a copy of the scope's current grids."""
    from gisgrid.layers import plans

    _plan_session(lambda s, p: _brief(plans.create(s, p, scope, name, target=target, tolerance=tolerance)))


@plan.command("list")
@click.option("--state")
def plan_list(state):
    """Plans, newest first."""
    from gisgrid.layers import plans

    _plan_session(lambda s, p: plans.list_plans(s, p, state))


@plan.command("propose")
@click.option("--scope", help="start a new plan for this community or street")
@click.option("--plan", "plan_id", type=int, help="or propose inside this draft plan")
@click.option("--target", type=int, help="households per grid (default: the plan's)")
@click.option("--tolerance", type=float, default=0.10, show_default=True)
@click.option("--keep-current", is_flag=True, help="keep today's grids where possible (fewest households move)")
@click.option("--seed", type=int, default=0, show_default=True)
def plan_propose(scope, plan_id, target, tolerance, keep_current, seed):
    """Propose contiguous grids of about TARGET households (buildings indivisible, roads as
    barriers); prints the summary, every exception, and the checks."""
    from gisgrid.errors import InvalidInput
    from gisgrid.layers import plans

    if (scope is None) == (plan_id is None):
        raise InvalidInput("give either --scope CODE (a new plan) or --plan ID", field="scope")

    def run_it(s, p):
        pid = plan_id if plan_id is not None else plans.create(s, p, scope, target=target, tolerance=tolerance)["id"]
        out = _brief(plans.propose(s, p, pid, target=target, tolerance=tolerance, keep_current=keep_current,
                                   seed=seed))
        return {"plan": pid, **out}
    _plan_session(run_it)


@plan.command("check")
@click.argument("plan_id", type=int)
def plan_check(plan_id):
    """Run every check; exit 1 when a check finds an error."""
    from gisgrid.layers import plans

    out = _plan_session(lambda s, p: _brief({"check": plans.check(s, p, plan_id)})["check"])
    if not out["ok"]:
        sys.exit(1)


@plan.command("diff")
@click.argument("plan_id", type=int)
def plan_diff(plan_id):
    """What publishing would change (records, staff, areas)."""
    from gisgrid.layers import plans

    def run_it(s, p):
        d = plans.diff(s, p, plan_id)
        d["changed_areas"] = len(d["changed_areas"]["features"])
        return d
    _plan_session(run_it)


@plan.command("undo")
@click.argument("plan_id", type=int)
def plan_undo(plan_id):
    """Undo the plan's last edit."""
    from gisgrid.layers import plans

    _plan_session(lambda s, p: _brief(plans.undo(s, p, plan_id)))


@plan.command("state")
@click.argument("plan_id", type=int)
@click.argument("action", type=click.Choice(["submit", "reopen", "discard", "publish", "rollback"]))
def plan_state(plan_id, action):
    """Move a plan: submit, reopen, discard, publish (one transaction), rollback."""
    from gisgrid.layers import plans

    def run_it(s, p):
        if action == "publish":
            return plans.publish(s, p, plan_id)
        if action == "rollback":
            return plans.rollback(s, p, plan_id)
        return plans.transition(s, p, plan_id, action)
    _plan_session(run_it)


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
