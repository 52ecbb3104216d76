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

import functools
from datetime import datetime, timezone
from urllib.parse import urlparse

from flask import Blueprint, current_app, g, make_response, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFProtect

from gisgrid import authz
from gisgrid.errors import GisgridError, InvalidInput
from gisgrid.layers import audit, rate_limits, users

bp = Blueprint("auth", __name__)
csrf = CSRFProtect()


class CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, with the signing serializer made once per key (Flask
    makes a new one on every request, with a cookie or without), and no cookie parsing for a
    request without cookies."""

    _made = None

    def open_session(self, app, request):
        # no Cookie header (API clients with a token, most field reports): the empty session
        # Flask's would make, without parsing the cookies, which walks the whole WSGI environ
        # (Granian copies the server's environment into every one)
        if "HTTP_COOKIE" not in request.environ and self.get_signing_serializer(app) is not None:
            return self.session_class()
        return super().open_session(app, request)

    def get_signing_serializer(self, app):
        keys = (app.secret_key, tuple(app.config["SECRET_KEY_FALLBACKS"] or ()))
        made = self._made
        if made is None or made[0] != keys:
            made = self._made = (keys, super().get_signing_serializer(app))
        return made[1]


def limited(limit, *, key=None, methods=None):
    """Refuse a view's callers past ``limit`` (``"10 per minute"``, or a callable giving it) per
    ``key()`` (default: the client's address), counted in the database so that every worker
    process shares one count (:mod:`gisgrid.layers.rate_limits`, a fixed window). Past it:
    429 with ``Retry-After``, the view not run. Every answer carries the ``X-RateLimit-*``
    headers. ``methods``: count only these (others pass). Stacked limits on one view need
    keys of their own (the counter is the endpoint's and the key's)."""
    def deco(view):
        @functools.wraps(view)
        def inner(*args, **kwargs):
            if methods is not None and request.method not in methods:
                return view(*args, **kwargs)
            who = key() if key is not None else (request.remote_addr or "-")
            quota = rate_limits.Quota.parse(f"{request.endpoint}:{who}", limit() if callable(limit) else limit)
            conns = current_app.extensions["gisgrid"]["direct_connections"]
            conns.run(lambda conn: rate_limits.hit(conn, quota), retry=True)   # counting twice is harmless
            quota.refuse_if_exceeded()
            response = make_response(view(*args, **kwargs))
            for name, value in quota.headers().items():
                response.headers.setdefault(name, value)      # the innermost limit's, when stacked
            return response
        return inner
    return deco


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
@limited(lambda: current_app.config["GISGRID_LOGIN_LIMIT"], methods=("POST",))
@limited("5 per minute", methods=("POST",), key=lambda: "user:" + request.form.get("username", ""))
def login():
    from gisgrid.web import db, i18n

    error = None
    if request.method == "POST":
        s = db()
        username = request.form.get("username", "")
        user = users.authenticate(s, username, request.form.get("password", ""))
        if user is None:
            audit.record(s, username[:100] or None, "login_failed", "user", None, reason=request.remote_addr)
            s.commit()
            error = i18n.t("login_failed")
        else:
            session.clear()
            session.permanent = True
            session["uid"], session["sv"] = user.id, user.session_version
            audit.record(s, user.username, "login", "user", user.id, reason=request.remote_addr)
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
