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
def link():
    """Recompute every record's grid/community/street/district links in bulk."""
    from gisgrid.layers import linking

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

    with _session() as (engine, Session):
        migrate.upgrade(engine)
        bar = _Progress(f"generate {scale}", 8)
        frames = gen.build(scale, seed=seed, until=_parse_until(until), progress=bar)
        bar.close()
        bar = _Progress(f"load {scale}", len(frames) + 1)
        with Session.begin() as s:
            counts = gen.load(s, frames, replace=replace, progress=bar)
        bar.close()
    for t, n in counts.items():
        click.echo(f"{t}: {n:,}")


def load_demo(Session, engine) -> bool:
    """Migrate and load the demo district unless it is there. True if it was loaded now."""
    from gisgrid import generate as gen
    from gisgrid.db import migrate

    migrate.upgrade(engine)
    with Session.begin() as s:
        if gen.is_loaded(s):
            return False
        s.execute(__import__("sqlalchemy").text("SELECT pg_advisory_xact_lock(20261122)"))
        if gen.is_loaded(s):
            return False
        gen.load(s, gen.build("demo"))
    return True


@main.command()
@click.option("--no-serve", is_flag=True, help="load only")
def demo(no_serve):
    """Load the demo district (idempotent) and serve the app."""
    with _session() as (engine, Session):
        t0 = time.perf_counter()
        loaded = load_demo(Session, engine)
        click.echo(("demo district loaded" if loaded else "demo district already loaded")
                   + f" ({time.perf_counter() - t0:.1f} s)")
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
            counts = osm.import_pbf(s, path)
    for t, n in counts.items():
        click.echo(f"{t}: {n:,}")


def _serve(settings):
    from gisgrid.web import create_app

    app = create_app()
    url = f"http://{settings.host}:{settings.port}/"
    click.echo(f"gisgrid serving at {url}", err=False)
    sys.stdout.flush()
    from werkzeug.serving import run_simple

    run_simple(settings.host, settings.port, app, threaded=True, use_reloader=False)


@main.command()
def serve():
    """Serve the web app (starts the embedded cluster if needed)."""
    _serve(_settings())


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
