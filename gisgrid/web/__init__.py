"""Flask app factory: the only place the web app's settings are assembled."""
from __future__ import annotations

from flask import Flask, g
from sqlalchemy import event
from sqlalchemy.exc import SQLAlchemyError

from gisgrid import config


def create_app(overrides: dict | None = None) -> Flask:
    """Build the app. ``overrides`` are :class:`gisgrid.config.Settings` fields layered on the
    environment (tests pass ``database_url`` and ``home``)."""
    from gisgrid.db.engine import DirectConnections, PooledConnections, database_url, libpq_url, make_engine, make_sessionmaker
    from gisgrid.web import (api, assets, auth, errors, incidents, onemap, open311, pages, patrol, plans,
                             principals, security, tiles, transfer)

    settings = config.load().with_overrides(overrides)
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.secret_key or _secret_key_file(settings.home),
        MAX_CONTENT_LENGTH=16 * 1024 * 1024,
        SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_SECURE=settings.cookie_secure,
        SESSION_COOKIE_NAME="gisgrid_session", PERMANENT_SESSION_LIFETIME=12 * 3600,
        WTF_CSRF_CHECK_DEFAULT=False,        # auth.load_principal checks CSRF for session requests only
        WTF_CSRF_TIME_LIMIT=12 * 3600,
        GISGRID_LOGIN_LIMIT=settings.login_limit,
        GISGRID_REPORT_LIMIT=settings.report_limit,
    )
    app.json.ensure_ascii = False
    app.session_interface = auth.CookieSessions()
    engine = make_engine(database_url(settings), statement_timeout_ms=30_000)
    # vector tiles: autocommitted single statements (no BEGIN/ROLLBACK round trips), planned
    # for their own box every time (prepared once per connection, so parsed once, but never a
    # generic plan: force_custom_plan), and never JIT-compiled (seconds of LLVM for a statement
    # that runs once); disposed with the main engine
    tile_engine = make_engine(database_url(settings), statement_timeout_ms=30_000, server_settings=TILE_SETTINGS,
                              isolation_level="AUTOCOMMIT", pool_use_lifo=True)
    event.listen(engine, "engine_disposed", lambda _engine: tile_engine.dispose())
    app.extensions["gisgrid"] = {"settings": settings, "engine": engine, "sessions": make_sessionmaker(engine),
                                 "autocommit_sessions": make_sessionmaker(
                                     engine.execution_options(isolation_level="AUTOCOMMIT")),
                                 "tile_sessions": make_sessionmaker(tile_engine),
                                 "tile_cache": tiles.TileCache(settings.tile_cache_mb * 1024 * 1024),
                                 "principals": principals.PrincipalCache(libpq_url(engine),
                                                                         ttl=settings.auth_cache_seconds),
                                 # one-statement hot paths (reports, rate-limit hits): psycopg connections, last used first
                                 "direct_connections": DirectConnections(engine, application_name="gisgrid",
                                                                         statement_timeout_ms=30_000),
                                 # tiles and their versions: the tile engine's psycopg connections, last used first
                                 "tile_connections": PooledConnections(tile_engine)}
    assets.localise_folium()
    errors.register(app)
    app.before_request(transfer.upload_limit)       # before any hook reads the form (NUL check, CSRF)
    security.register(app, settings.basemap_url)
    auth.csrf.init_app(app)
    app.before_request(auth.load_principal)
    app.register_blueprint(auth.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(incidents.bp)
    app.register_blueprint(patrol.bp)
    app.register_blueprint(open311.bp)
    app.register_blueprint(transfer.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(plans.bp)
    app.register_blueprint(tiles.bp)
    app.register_blueprint(onemap.bp)

    @app.teardown_appcontext
    def _close_session(exc):
        for name in _SESSIONS:
            s = g.pop(name, None)
            if s is not None:
                try:
                    s.close()
                except SQLAlchemyError as e:     # the database went away after the response was made
                    app.logger.warning("closing the request's session failed: %s", e.__class__.__name__)

    return app


#: connections that draw tiles (and the one map's figures): plan every statement for its own box,
#: prepared or not, and never JIT-compile one
TILE_SETTINGS = {"jit": "off", "plan_cache_mode": "force_custom_plan"}


def _secret_key_file(home) -> str:
    import os
    import secrets
    from pathlib import Path

    path = Path(home) / "secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


_SESSIONS = {"db": "sessions", "db_autocommit": "autocommit_sessions", "db_tiles": "tile_sessions"}


def db(autocommit: bool = False, tiles: bool = False):
    """The request's session (one per request, closed at teardown). ``autocommit``: a session
    whose every statement commits by itself, for a view whose whole write is one statement (no
    BEGIN and COMMIT round trips around it). ``tiles``: autocommitted too, on the tile engine
    (no prepared plans, no JIT; :func:`create_app`)."""
    from flask import current_app

    name = "db_tiles" if tiles else "db_autocommit" if autocommit else "db"
    if name not in g:
        setattr(g, name, current_app.extensions["gisgrid"][_SESSIONS[name]]())
    return getattr(g, name)


def settings() -> config.Settings:
    from flask import current_app

    return current_app.extensions["gisgrid"]["settings"]
