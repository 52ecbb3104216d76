"""Flask app factory: the only place the web app's settings are assembled."""
from __future__ import annotations

from flask import Flask, g

from gisgrid import config


def create_app(overrides: dict | None = None) -> Flask:
    """Build the app. ``overrides`` are :class:`gisgrid.config.Settings` fields layered on the
    environment (tests pass ``database_url`` and ``home``)."""
    from gisgrid.db.engine import database_url, make_engine, make_sessionmaker
    from gisgrid.web import api, assets, errors, pages

    settings = config.load().with_overrides(overrides)
    app = Flask(__name__)
    app.config.update(SECRET_KEY=settings.secret_key or None, MAX_CONTENT_LENGTH=16 * 1024 * 1024,
                      JSON_AS_ASCII=False)
    app.json.ensure_ascii = False
    engine = make_engine(database_url(settings), statement_timeout_ms=30_000)
    app.extensions["gisgrid"] = {"settings": settings, "engine": engine, "sessions": make_sessionmaker(engine)}
    assets.localise_folium()
    errors.register(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(pages.bp)

    @app.teardown_appcontext
    def _close_session(exc):
        s = g.pop("db", None)
        if s is not None:
            s.close()

    return app


def db():
    """The request's session (one per request, closed at teardown)."""
    from flask import current_app

    if "db" not in g:
        g.db = current_app.extensions["gisgrid"]["sessions"]()
    return g.db


def settings() -> config.Settings:
    from flask import current_app

    return current_app.extensions["gisgrid"]["settings"]
