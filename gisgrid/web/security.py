"""Response headers for every response, and the CSP nonce the pages' inline scripts carry.

folium writes its map as inline ``<script>`` blocks; instead of allowing every inline script
(``'unsafe-inline'``), each page response gets a fresh nonce that :func:`add_nonce` puts on its
own script tags, so an injected script without it does not run.
"""
from __future__ import annotations

import re
import secrets
from urllib.parse import urlparse

from flask import Flask, g, request

_SCRIPT = re.compile(r"<script(?=[\s>])")
_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")


def nonce() -> str:
    if "csp_nonce" not in g:
        g.csp_nonce = secrets.token_urlsafe(16)
    return g.csp_nonce


def add_nonce(html: str) -> str:
    return _SCRIPT.sub(f'<script nonce="{nonce()}"', html)


def _has_nul(value) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def reject_nul() -> None:
    """NUL characters cannot be stored in PostgreSQL text and have no place in any field: refuse
    them at the door, naming where they were."""
    from gisgrid.errors import InvalidInput

    # the raw request first: the parsed values are walked only when a NUL may be there (a
    # decoded path holds it as is, a query string as %00; form fields are parsed for any form)
    form = request.mimetype in _FORMS
    for where, values in (("path", request.view_args if "\x00" in request.path else None),
                          ("query", request.args.to_dict(flat=False) if b"%00" in request.query_string or b"\x00" in request.query_string else None),
                          ("form", request.form.to_dict(flat=False) if form else None)):
        for k, v in (values or {}).items():
            if _has_nul(k) or _has_nul(v):
                raise InvalidInput(f"{where} parameter {k!r} contains a NUL character", field=str(k).replace("\x00", ""))
    # in JSON a NUL can only be the escape \u0000 (a raw NUL byte is not valid JSON): look for it
    # in the raw body before walking the parsed one
    if not form and request.is_json and b"\\u0000" in request.get_data(cache=True):
        body = request.get_json(silent=True)
        if _has_nul(body):
            raise InvalidInput("the JSON body contains a NUL character", field="body")


def register(app: Flask, basemap_url: str = "") -> None:
    app.before_request(reject_nul)

    tile_host = ""
    if basemap_url:
        u = urlparse(basemap_url.replace("{s}", "a"))
        tile_host = f" {u.scheme}://{u.netloc}" if u.netloc else ""

    def csp(script: str) -> str:
        return (f"default-src 'self'; script-src {script}; style-src 'self' 'unsafe-inline'; "
                f"img-src 'self' data: blob:{tile_host}; connect-src 'self'; font-src 'self' data:; "
                "object-src 'none'; base-uri 'self'; frame-ancestors 'none'; form-action 'self'")

    plain_csp = csp("'self'")        # made once: most answers (API, tiles) carry no nonce

    @app.after_request
    def _headers(resp):
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        resp.headers.setdefault("Content-Security-Policy",
                                csp(f"'self' 'nonce-{g.csp_nonce}'") if "csp_nonce" in g else plain_csp)
        if request.path.startswith("/api/") and "Cache-Control" not in resp.headers:
            resp.headers["Cache-Control"] = "no-store"
        return resp
