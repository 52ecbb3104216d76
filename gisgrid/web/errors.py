"""Errors → HTTP in one place: JSON for the API, a short HTML page for pages."""
from __future__ import annotations

import psycopg
from flask import Flask, jsonify, request
from markupsafe import escape
from sqlalchemy.exc import DataError, OperationalError
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from gisgrid.errors import GisgridError


def _wants_json() -> bool:
    return request.path.startswith(("/api/", "/tiles/", "/open311/"))


def register(app: Flask) -> None:
    @app.errorhandler(GisgridError)
    def _gisgrid(e: GisgridError):
        from gisgrid.layers.rate_limits import Exceeded

        headers = e.quota.headers() if isinstance(e, Exceeded) else {}
        if _wants_json():
            return jsonify(e.to_dict()), e.status, headers
        return f"<h1>{e.status}</h1><p>{escape(str(e))}</p>", e.status, headers    # messages quote the input

    @app.errorhandler(DataError)
    def _bad_value(e):
        # A backstop: values are checked before they reach SQL; one that slips through is the
        # caller's bad input, not a server error.
        from gisgrid.db.errors import translate

        err = translate(e)
        body = {"error": "InvalidInput", "message": f"a value is out of range or malformed: {err.message}"}
        return (jsonify(body), 400) if _wants_json() else (f"<p>{escape(body['message'])}</p>", 400)

    @app.errorhandler(OperationalError)
    @app.errorhandler(psycopg.OperationalError)      # the direct connections (reports, rate limits)
    def _db_down(e):
        body = {"error": "DatabaseUnavailable", "message": "the database did not answer in time; retry shortly"}
        return (jsonify(body), 503) if _wants_json() else (f"<p>{body['message']}</p>", 503)

    @app.errorhandler(CSRFError)
    def _csrf(e):
        body = {"error": "CSRFError", "message": f"{e.description}: send the csrf_token form field or X-CSRFToken header"}
        return (jsonify(body), 400) if _wants_json() else (f"<p>{escape(body['message'])}</p>", 400)

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException):
        if _wants_json():
            return jsonify({"error": e.name, "message": e.description}), e.code
        return e
