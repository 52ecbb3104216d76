"""Authentication and the per-endpoint access rule, for every request.

* Pages log in with a session cookie (HttpOnly, SameSite=Lax, Secure unless
  ``GISGRID_COOKIE_SECURE=0``) and every unsafe request made with a session carries a CSRF
  token (Flask-WTF). Devices and integrations send ``Authorization: Bearer ggt_…`` (no cookie,
  so no CSRF).
* Every view declares what it needs with ``@needs("read")`` (an action of
  :mod:`gisgrid.authz`) or ``@public``. A view that declares nothing is refused (fail closed),
  and the authorisation-matrix test lists every route.
"""
from __future__ import annotations

import threading
from datetime import datetime, timezone
from urllib.parse import urlparse

from flask import Blueprint, current_app, g, redirect, render_template, request, session, url_for
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_wtf.csrf import CSRFProtect
import psycopg
from limits.storage import Storage

from gisgrid import authz
from gisgrid.errors import GisgridError, InvalidInput
from gisgrid.layers import audit, rate_limits, users

bp = Blueprint("auth", __name__)
csrf = CSRFProtect()


class SharedCounters(Storage):
    """Flask-Limiter storage ``gisgrid://``: the counters of :mod:`gisgrid.layers.rate_limits`
    in the current app's database, so every worker process counts against the same limit.
    Each hit is its own autocommitted statement, outside the request's transaction: a refused
    or failed request still counts. The count and window end a hit returns are kept for the
    rest of the request, so the rate-limit headers cost no second query."""

    STORAGE_SCHEME = ["gisgrid"]

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options):
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)

    @property
    def base_exceptions(self):
        return psycopg.Error

    def _run(self, work):
        """``work(connection)`` on this thread's counter connection. A connection found dead
        (the database restarted since it was made) is replaced and the work tried once more;
        a second failure propagates (503, as any unreachable database)."""
        conns = current_app.extensions["gisgrid"]["counter_connections"]
        for attempt in (1, 2):
            conn = conns.get()
            try:
                return work(conn)
            except psycopg.OperationalError:
                conn.close()
                if attempt == 2:
                    raise

    def _seen(self) -> dict:
        if "rate_windows" not in g:
            g.rate_windows = {}
        return g.rate_windows

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        count, ends = self._run(lambda c: rate_limits.incr(c, key, expiry, amount))
        self._seen()[key] = (count, ends)
        return count

    def get(self, key: str) -> int:
        if key in self._seen():
            return self._seen()[key][0]
        return self._run(lambda c: rate_limits.get(c, key))

    def get_expiry(self, key: str) -> float:
        if key in self._seen():
            return self._seen()[key][1]
        return self._run(lambda c: rate_limits.expiry(c, key))

    def check(self) -> bool:
        return self._run(lambda c: c.execute("SELECT true").fetchone()[0])

    def reset(self) -> int | None:
        return self._run(rate_limits.clear)

    def clear(self, key: str) -> None:
        self._run(lambda c: rate_limits.clear(c, key))


class CounterConnections:
    """One autocommitted psycopg connection per thread for the rate-limit counters, made on
    first use and replaced after an error; all closed when the app's engine is disposed."""

    def __init__(self, engine):
        from sqlalchemy import event

        from gisgrid.db.engine import libpq_url

        self._url = libpq_url(engine)
        self._local = threading.local()
        self._all: list = []
        self._lock = threading.Lock()
        event.listen(engine, "engine_disposed", lambda _engine: self.close_all())

    def get(self):
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = self._local.conn = psycopg.connect(self._url, autocommit=True, connect_timeout=5,
                                                      application_name="gisgrid rate limits")
            with self._lock:
                self._all = [c for c in self._all if not c.closed] + [conn]
        return conn

    def close_all(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for c in conns:
            c.close()


limiter = Limiter(key_func=get_remote_address, storage_uri="gisgrid://", default_limits=[],
                  headers_enabled=True)
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


class NoAccessRule(GisgridError):
    status = 403


def needs(action: str):
    """Declare the action a view needs; the before-request hook enforces it."""
    if action not in authz.ACTIONS:
        raise ValueError(f"unknown action {action!r}")

    def deco(view):
        view._gisgrid_action = action
        return view
    return deco


def public(view):
    view._gisgrid_action = None
    return view


def principal() -> authz.Principal:
    """The caller of this request (set by :func:`load_principal`)."""
    return g.principal


def _open311_api_key() -> str | None:
    """Open311 clients send the token as ``api_key`` (query, or form for POST), not as a header."""
    if not request.path.startswith("/open311/") or request.headers.get("Authorization"):
        return None
    return request.values.get("api_key", "").strip() or None


def _cache():
    return current_app.extensions["gisgrid"]["principals"]


def _from_bearer(db) -> authz.Principal | None:
    """``db``: a callable giving the request's session, called only when the token is not remembered."""
    token = _open311_api_key()
    if token is None:
        header = request.headers.get("Authorization", "")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise authz.Unauthenticated("Authorization header must be 'Bearer <token>'")
    token = token.strip()
    cache, key = _cache(), ("token", users.token_digest(token))
    hit = cache.get(key)
    if hit is not None and (hit[1] is None or hit[1] > datetime.now(timezone.utc)):
        return hit[0]
    generation = cache.generation()
    s = db()
    found = users.principal_for_token(s, token)
    if found is None:
        raise authz.Unauthenticated("the API token is unknown, revoked or expired")
    if s.dirty:
        s.commit()   # last_used_at, when it was due
    cache.put(key, found, generation)
    return found[0]


def _from_session(db) -> authz.Principal | None:
    uid = session.get("uid")
    if uid is None:
        return None
    cache, key = _cache(), ("user", uid)
    hit = cache.get(key)
    if hit is None:
        generation = cache.generation()
        user = db().get(users.User, uid)
        hit = (user.principal(), user.session_version) if user is not None and user.active else (None, None)
        cache.put(key, hit, generation)
    principal, version = hit
    if principal is None or version != session.get("sv"):
        session.clear()
        return None
    return principal


def load_principal():
    """Before every request: who is calling, and may they call this endpoint at all."""
    from gisgrid.web import db

    view = current_app.view_functions.get(request.endpoint) if request.endpoint else None
    if view is None or request.endpoint == "static":
        return None
    if not hasattr(view, "_gisgrid_action"):
        raise NoAccessRule(f"endpoint {request.endpoint!r} declares no access rule")
    g.via_token = bool(request.headers.get("Authorization") or _open311_api_key())
    g.principal = _from_bearer(db) if g.via_token else _from_session(db)   # db(): only when not remembered
    action = view._gisgrid_action
    if action is not None:
        if g.principal is None and not request.path.startswith(("/api/", "/tiles/", "/open311/")):
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
        authz.require(g.principal, action)
    if not g.via_token and request.method in UNSAFE:
        csrf.protect()          # a session (cookie) request that changes something carries the token
    return None


def _safe_next(target: str | None) -> str:
    if not target:
        return url_for("pages.one_map")
    parts = urlparse(target)
    if parts.scheme or parts.netloc or not target.startswith("/"):
        return url_for("pages.one_map")
    return target


@bp.route("/login", methods=["GET", "POST"])
@public
@limiter.limit(lambda: current_app.config["GISGRID_LOGIN_LIMIT"], methods=["POST"])
@limiter.limit("5 per minute", methods=["POST"], key_func=lambda: "user:" + request.form.get("username", ""))
def login():
    from gisgrid.web import db, i18n

    error = None
    if request.method == "POST":
        s = db()
        username = request.form.get("username", "")
        user = users.authenticate(s, username, request.form.get("password", ""))
        if user is None:
            audit.record(s, username[:100] or None, "login_failed", "user", None, reason=get_remote_address())
            s.commit()
            error = i18n.t("login_failed")
        else:
            session.clear()
            session.permanent = True
            session["uid"], session["sv"] = user.id, user.session_version
            audit.record(s, user.username, "login", "user", user.id, reason=get_remote_address())
            s.commit()
            return redirect(_safe_next(request.args.get("next")))
    return render_template("login.html", error=error, t=i18n.t, lang=i18n.lang()), (401 if error else 200)


@bp.post("/logout")
@public
def logout():
    session.clear()
    return redirect(url_for("auth.login"))


def check_pagination(limit_raw, offset_raw, *, default=100, cap=1000) -> tuple[int, int]:
    """``limit``/``offset`` query values, capped; a clear 400 for anything else."""
    try:
        limit = default if limit_raw is None else int(limit_raw)
        offset = 0 if offset_raw is None else int(offset_raw)
    except ValueError:
        raise InvalidInput(f"limit and offset must be integers, got {limit_raw!r}, {offset_raw!r}",
                           field="limit") from None
    if not 1 <= limit <= cap:
        raise InvalidInput(f"limit must be between 1 and {cap}, got {limit}", field="limit")
    if not 0 <= offset <= 10_000_000:
        raise InvalidInput(f"offset must be between 0 and 10000000, got {offset}", field="offset")
    return limit, offset
