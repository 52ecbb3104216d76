"""Settings, read from the environment and nowhere else.

Every key has a default here; ``create_app(overrides)`` and the CLI layer a dict on top.
Importing this module reads nothing: call :func:`load`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    #: ``GISGRID_DATABASE_URL``: any PostGIS 3 server. Empty = the embedded cluster.
    database_url: str = ""
    #: ``GISGRID_HOME``: where the embedded cluster and uploads live.
    home: Path = Path(".gisgrid")
    #: ``GISGRID_PG_BINDIR``: PostgreSQL server binaries (initdb, pg_ctl) for the embedded cluster.
    pg_bindir: str = ""
    #: ``GISGRID_PG_FAST``: fsync=off for throw-away clusters (tests, benchmarks). Never in production.
    pg_fast: bool = False
    #: ``GISGRID_METRIC_CRS``: projected CRS for areas and distances. Empty = the CGCS2000
    #: 3-degree Gauss-Krüger zone of the district (EPSG:4534..4554).
    metric_crs: str = ""
    #: ``GISGRID_HOST`` / ``GISGRID_PORT``: where ``gisgrid serve`` listens.
    host: str = "127.0.0.1"
    port: int = 5080
    #: ``GISGRID_WORKERS`` / ``GISGRID_THREADS``: web worker processes (0 = cores + 1) and
    #: WSGI threads per process of ``gisgrid serve`` (gisgrid.web.server).
    workers: int = 0
    threads: int = 8
    #: ``GISGRID_BASEMAP_URL``: an XYZ tile URL (e.g. Tianditu or an intranet server). Empty = none;
    #: the district's own layers draw the map.
    basemap_url: str = ""
    basemap_attribution: str = ""
    #: ``GISGRID_SECRET_KEY``: Flask session signing key. Empty = a random key kept in
    #: ``$GISGRID_HOME/secret_key`` (mode 0600), created on first use.
    secret_key: str = ""
    #: ``GISGRID_COOKIE_SECURE``: send the session cookie over HTTPS only (browsers also accept
    #: Secure cookies from http://localhost and 127.0.0.1, so the demo works with it on).
    cookie_secure: bool = True
    #: ``GISGRID_LOGIN_LIMIT``: login attempts per client address ("10 per minute": the limits library's syntax).
    login_limit: str = "10 per minute"
    #: ``GISGRID_REPORT_LIMIT``: incident reports per user.
    report_limit: str = "120 per minute"
    #: ``GISGRID_IMPORT_LIMIT_MB``: largest file an API import takes (other requests: 16 MB).
    import_limit_mb: float = 64
    #: ``GISGRID_TILE_CACHE_MB``: in-process cache of drawn vector tiles (0 = none).
    tile_cache_mb: int = 128
    #: ``GISGRID_DUPLICATE_METRES`` / ``GISGRID_DUPLICATE_HOURS``: an open incident of the same
    #: category this near and this recent is offered as a possible duplicate of a new report.
    duplicate_metres: float = 50.0
    duplicate_hours: float = 72.0
    #: ``GISGRID_AUTH_CACHE_SECONDS``: how long a web worker may remember who a token or session
    #: stands for (gisgrid.web.principals; forgotten at once when any account or token changes).
    #: 0 = read the accounts on every request.
    auth_cache_seconds: float = 60.0

    @property
    def embedded(self) -> bool:
        return not self.database_url

    def with_overrides(self, overrides: dict | None) -> "Settings":
        if not overrides:
            return self
        known = {f for f in self.__dataclass_fields__}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown settings {unknown}; known: {sorted(known)}")
        return replace(self, **overrides)


def _bool(v: str) -> bool:
    return v.strip().lower() in {"1", "true", "yes", "on"}


def load(env: dict | None = None) -> Settings:
    """Settings from ``env`` (default ``os.environ``)."""
    env = os.environ if env is None else env
    return Settings(
        database_url=env.get("GISGRID_DATABASE_URL", ""),
        home=Path(env.get("GISGRID_HOME", ".gisgrid")).absolute(),
        pg_bindir=env.get("GISGRID_PG_BINDIR", ""),
        pg_fast=_bool(env.get("GISGRID_PG_FAST", "0")),
        metric_crs=env.get("GISGRID_METRIC_CRS", ""),
        host=env.get("GISGRID_HOST", "127.0.0.1"),
        port=int(env.get("GISGRID_PORT", "5080")),
        workers=int(env.get("GISGRID_WORKERS", "0")),
        threads=int(env.get("GISGRID_THREADS", "8")),
        basemap_url=env.get("GISGRID_BASEMAP_URL", ""),
        basemap_attribution=env.get("GISGRID_BASEMAP_ATTRIBUTION", ""),
        secret_key=env.get("GISGRID_SECRET_KEY", ""),
        cookie_secure=_bool(env.get("GISGRID_COOKIE_SECURE", "1")),
        login_limit=env.get("GISGRID_LOGIN_LIMIT", "10 per minute"),
        report_limit=env.get("GISGRID_REPORT_LIMIT", "120 per minute"),
        import_limit_mb=float(env.get("GISGRID_IMPORT_LIMIT_MB", "64")),
        tile_cache_mb=int(env.get("GISGRID_TILE_CACHE_MB", "128")),
        duplicate_metres=float(env.get("GISGRID_DUPLICATE_METRES", "50")),
        duplicate_hours=float(env.get("GISGRID_DUPLICATE_HOURS", "72")),
        auth_cache_seconds=float(env.get("GISGRID_AUTH_CACHE_SECONDS", "60")),
    )
