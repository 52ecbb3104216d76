"""Open311 GeoReport v2 at ``/open311/v2/``: the category catalogue as services, incidents as
service requests, in XML (required by the spec) and JSON (a list at the top level).

Endpoints (each with a ``.json`` or ``.xml`` suffix; any other suffix, or a path under
``/open311/v2/`` that names no endpoint, is a 404 in the GeoReport error format)::

    GET  services.{fmt}                       the catalogue (service_code = gisgrid category)
    GET  services/{service_code}.{fmt}        its definition (metadata is false: no attributes)
    GET  requests.{fmt}                       service_request_id | service_code, status,
                                              start_date, end_date (last 90 days by default);
                                              at most 1000, newest first, the caller's
                                              jurisdiction only
    GET  requests/{service_request_id}.{fmt}  one request (a list of one), 404 outside the
                                              caller's jurisdiction
    POST requests.{fmt}                       form-urlencoded; 201 (200 for a retry with the
                                              same ``Idempotency-Key`` header)

Status mapping (GeoReport has only ``open``/``closed``; gisgrid's state goes to
``status_notes`` as "<中文名> (<state>)", plus "; 合并至 <code> (merged into)" for a merged
duplicate):

    ============  ==========  ================
    gisgrid       status      status_notes
    ============  ==========  ================
    reported      open        待受理 (reported)
    accepted      open        已受理 (accepted)
    dispatched    open        已分派 (dispatched)
    handling      open        处置中 (handling)
    feedback      open        已反馈 (feedback)
    evaluated     open        已评价 (evaluated)
    closed        closed      已办结 (closed)
    ============  ==========  ================

Other fields: ``agency_responsible`` is "<level> <code>" of the level that answers for the
incident now (``grid 420103001001001``, ``street 420103001000``…); ``expected_datetime`` is the
current step's deadline; ``media_url`` the first photo (``/api/photos/<sha256>``, which needs the
same credentials); ``address_id``/``zipcode`` are always null; datetimes are ISO 8601 with
their offset.

Beyond the spec: POST needs ``lat`` and ``long`` (WGS84 decimal degrees). The spec accepts
``address_string`` or ``address_id`` instead, but gisgrid links every report to the grid that
contains its point, so an address alone is a 400 saying so (the address is kept when sent
with a point). ``email``, ``phone``, ``device_id``, ``account_id``, ``media_url``,
``jurisdiction_id`` and ``attribute[…]`` are accepted and not stored (no personal data is
kept that gisgrid does not need); any other field is a 400 naming it. ``first_name`` and
``last_name`` become the reporter. Reports filed here have source ``resident`` (群众上报).

Credentials: ``api_key`` is a gisgrid API token (``gisgrid user token create``, ``ggt_…``)
of a user whose jurisdiction is the caller's: ``read`` scope to list, ``report`` to POST. The
rest of the API takes the same token as ``Authorization: Bearer ggt_…``, and so do these
endpoints. An ``api_key`` query (GET) or form (POST) value is turned into the bearer token by
``gisgrid.web.auth.load_principal`` for paths under ``/open311/`` when no Authorization
header is sent; a token request needs no CSRF token. GETs also work with a logged-in session;
POST needs a token (a session POST is a 400 asking for ``api_key``).

Errors are ``[{"code": 400, "description": "…"}]`` (JSON) or
``<errors><error><code>400</code><description>…</description></error></errors>`` (XML,
chosen by the path's suffix) with that HTTP status. The blueprint's handlers take precedence
over the app's in :mod:`gisgrid.web.errors` for every request routed to one of its views,
including errors raised by the app-wide before-request hooks (401/403 from
``auth.load_principal``, a NUL character from ``security.reject_nul``, a missing CSRF token):
Flask picks handlers by the matched endpoint's blueprint, and routing happens before those
hooks run. Only requests that match no route at all (``/open311/v2/`` itself, or a method the
route does not take: 405) come back in gisgrid's ``{"error", "message"}`` JSON.
"""
from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone

from flask import Blueprint, Response, current_app, g, jsonify, request
from sqlalchemy import text
from sqlalchemy.exc import DataError, OperationalError
from werkzeug.exceptions import HTTPException, default_exceptions

from gisgrid import authz
from gisgrid.errors import GisgridError, InvalidInput, NotFound, UnknownReference
from gisgrid.layers import incidents
from gisgrid.web import db, settings
from gisgrid.web.auth import limited, needs, principal, public

bp = Blueprint("open311", __name__, url_prefix="/open311/v2")

FORMATS = ("json", "xml")
GROUP = "网格事件"
MAX_RESULTS = 1000
DEFAULT_DAYS = 90
CHINA = timezone(timedelta(hours=8))          # a date-time without an offset is Beijing time
LEVEL_COLUMNS = {"grid": "grid_code", "community": "community_code", "street": "street_code",
                 "district": "district_code"}
SERVICE_FIELDS = ("service_code", "service_name", "description", "metadata", "type", "keywords", "group")
REQUEST_FIELDS = ("service_request_id", "status", "status_notes", "service_name", "service_code", "description",
                  "agency_responsible", "service_notice", "requested_datetime", "updated_datetime",
                  "expected_datetime", "address", "address_id", "zipcode", "lat", "long", "media_url")
POST_FIELDS = {"api_key", "jurisdiction_id", "service_code", "lat", "long", "address_string", "address_id", "email",
               "device_id", "account_id", "first_name", "last_name", "phone", "description", "media_url"}
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_DATE_ONLY = re.compile(r"\d{4}-?\d{2}-?\d{2}")


# -- formats ----------------------------------------------------------------------------------
def _format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise NotFound(f"unknown format {fmt!r}: end the path with .json or .xml", field="format")
    return fmt


def _error_format() -> str:
    fmt = (request.view_args or {}).get("fmt")
    if fmt in FORMATS:
        return fmt
    return "xml" if request.path.endswith(".xml") else "json"


def _xml_text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return _XML_ILLEGAL.sub("", str(value))       # characters XML 1.0 cannot carry


def _xml_fill(el: ET.Element, obj: dict) -> ET.Element:
    for k, v in obj.items():
        child = ET.SubElement(el, k)
        if isinstance(v, list):
            for item in v:
                _xml_fill(ET.SubElement(child, k[:-1] if k.endswith("s") else "item"), item)
        else:
            child.text = _xml_text(v)
    return el


def _xml_response(root: ET.Element, status: int = 200) -> Response:
    body = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return Response(body, status=status, content_type="text/xml; charset=utf-8")


def _respond(fmt: str, items: list[dict], root: str, item: str, status: int = 200):
    if fmt == "json":
        return jsonify(items), status
    el = ET.Element(root)
    for obj in items:
        _xml_fill(ET.SubElement(el, item), obj)
    return _xml_response(el, status)


def _error_response(status: int, description: str):
    if _error_format() == "json":
        return jsonify([{"code": status, "description": description}]), status
    root = ET.Element("errors")
    _xml_fill(ET.SubElement(root, "error"), {"code": status, "description": description})
    return _xml_response(root, status)


# -- errors in the GeoReport format -----------------------------------------------------------
@bp.errorhandler(GisgridError)
def _gisgrid_error(e: GisgridError):
    status = 400 if isinstance(e, UnknownReference) else e.status      # a code naming nothing: bad input here
    return _error_response(status, str(e))


def _http_error(e: HTTPException):
    return _error_response(e.code or 500, e.description or e.name)


# Flask looks for a handler registered for the error's status code (blueprint, then app) before
# one registered for a class: the app's CSRFError handler is a 400 one, so register per code too.
bp.register_error_handler(HTTPException, _http_error)
for _code in default_exceptions:
    bp.register_error_handler(_code, _http_error)


@bp.errorhandler(DataError)
def _data_error(e):
    from gisgrid.db.errors import translate

    return _error_response(400, f"a value is out of range or malformed: {translate(e).message}")


@bp.errorhandler(OperationalError)
def _db_down(e):
    return _error_response(503, "the database did not answer in time; retry shortly")


@bp.after_request
def _no_store(resp):
    resp.headers.setdefault("Cache-Control", "no-store")      # answers depend on the caller's jurisdiction
    return resp


# -- services ---------------------------------------------------------------------------------
def _catalogue() -> dict[str, dict]:
    return {c["code"]: c for c in incidents.categories(db())}


def _service(c: dict) -> dict:
    return {"service_code": c["code"], "service_name": c["name"],
            "description": c.get("name_en") or incidents.CATEGORIES_EN.get(c["code"]) or c["name"],
            "metadata": False, "type": "realtime", "keywords": "", "group": GROUP}


@bp.get("/services.<fmt>")
@needs("read")
def service_list(fmt):
    """The category catalogue (事件类别) as GeoReport services."""
    fmt = _format(fmt)
    return _respond(fmt, [_service(c) for c in _catalogue().values()], "services", "service")


@bp.get("/services/<service_code>.<fmt>")
@needs("read")
def service_definition(service_code, fmt):
    """A service's definition: gisgrid categories have no extra attributes (metadata false)."""
    fmt = _format(fmt)
    if service_code not in _catalogue():
        raise NotFound(f"no service_code {service_code!r}; see services.{fmt}", field="service_code")
    body = {"service_code": service_code, "attributes": []}
    if fmt == "json":
        return jsonify(body)
    return _xml_response(_xml_fill(ET.Element("service_definition"), body))


# -- requests ---------------------------------------------------------------------------------
def _iso(value) -> str | None:
    if value is None:
        return None
    dt = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=CHINA)
    return dt.replace(microsecond=0).isoformat()


def _agency(d: dict) -> str:
    levels = incidents.LEVELS
    level = d.get("level") or "grid"
    for lv in levels[levels.index(level):]:
        code = d.get(LEVEL_COLUMNS[lv])
        if code:
            return f"{lv} {code}"
    return level


def _status_notes(d: dict) -> str:
    notes = f"{incidents.STATES[d['state']]} ({d['state']})"
    if d.get("merged_into"):
        notes += f"; 合并至 {d['merged_into']} (merged into)"
    return notes


def _first_photos(codes: list[str]) -> dict[str, str]:
    if not codes:
        return {}
    rows = db().execute(text(
        "SELECT DISTINCT ON (i.code) i.code, ip.photo_sha256 FROM incident_photo ip "
        "JOIN incident i ON i.id = ip.incident_id WHERE i.code = ANY(:codes) "
        "ORDER BY i.code, ip.at, ip.photo_sha256"), {"codes": codes})
    return {code: sha for code, sha in rows}


def _requests(items: list[dict]) -> list[dict]:
    names = {code: c["name"] for code, c in _catalogue().items()}
    photos = _first_photos([d["code"] for d in items])
    out = []
    for d in items:
        sha = photos.get(d["code"])
        out.append({
            "service_request_id": d["code"],
            "status": "closed" if d["state"] == "closed" else "open",
            "status_notes": _status_notes(d),
            "service_name": names.get(d["category"]) or incidents.CATEGORIES.get(d["category"], d["category"]),
            "service_code": d["category"],
            "description": d.get("description") or "",
            "agency_responsible": _agency(d),
            "service_notice": "",
            "requested_datetime": _iso(d.get("reported_at")),
            "updated_datetime": _iso(d.get("updated_at")),
            "expected_datetime": _iso(d.get("deadline")),
            "address": d.get("address"),
            "address_id": None,
            "zipcode": None,
            "lat": d["lat"],
            "long": d["lon"],
            "media_url": f"/api/photos/{sha}" if sha else None,
        })
    return out


def _when(name: str, value: str | None, *, end: bool = False) -> datetime | None:
    if not value:
        return None
    value = re.sub(r"(\d) (\d{2}(:?\d{2})?)$", r"\1+\2", value.strip())   # an unencoded '+' arrives as ' '
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{name} must be an ISO 8601 date or date-time (e.g. 2024-05-01T08:00:00+08:00), "
                           f"got {value!r}", field=name) from None
    if end and _DATE_ONLY.fullmatch(value):
        dt += timedelta(days=1)              # a date as end_date includes that whole day
    return dt if dt.tzinfo else dt.replace(tzinfo=CHINA)


def _service_codes(raw: str | None) -> list[str] | None:
    if not raw:
        return None
    codes = [c.strip() for c in raw.split(",") if c.strip()]
    known = _catalogue()
    unknown = [c for c in codes if c not in known]
    if unknown:
        raise InvalidInput(f"unknown service_code {unknown[0]!r}; service codes: {', '.join(sorted(known))}",
                           field="service_code")
    return codes or None


def _states(raw: str | None) -> list[str] | None:
    if not raw:
        return None
    wanted = {s.strip().lower() for s in raw.split(",") if s.strip()}
    bad = sorted(wanted - {"open", "closed"})
    if bad:
        raise InvalidInput(f"status must be open, closed or both (comma-separated), got {bad[0]!r}", field="status")
    if wanted == {"open", "closed"} or not wanted:
        return None
    return ["closed"] if wanted == {"closed"} else [s for s in incidents.STATES if s != "closed"]


@bp.get("/requests.<fmt>")
@needs("read")
def request_list(fmt):
    """Service requests of the caller's jurisdiction. ``service_request_id`` (comma-separated)
    overrides every other filter, as the spec says; otherwise ``service_code``, ``status``
    (open|closed) and ``start_date``/``end_date`` on the requested time (default: the last 90
    days; ``end_date`` alone: the 90 days before it)."""
    fmt = _format(fmt)
    a, s = request.args, db()
    scope = authz.scope_sql(principal(), "l")
    ids = a.get("service_request_id")
    if ids:
        codes = list(dict.fromkeys(c.strip() for c in ids.split(",") if c.strip()))
        if len(codes) > MAX_RESULTS:
            raise InvalidInput(f"at most {MAX_RESULTS} service_request_id values, got {len(codes)}",
                               field="service_request_id")
        items = []
        for code in codes:
            try:
                items.append(incidents.detail(s, code, scope))
            except NotFound:
                pass                          # not there or not yours: simply not in the answer
    else:
        start, end = _when("start_date", a.get("start_date")), _when("end_date", a.get("end_date"), end=True)
        if start is None:
            start = (end or datetime.now(timezone.utc)) - timedelta(days=DEFAULT_DAYS)
        if end is not None and end <= start:
            raise InvalidInput(f"end_date must be after start_date ({start.isoformat()})", field="end_date")
        items = incidents.search(s, scope, state=_states(a.get("status")), category=_service_codes(a.get("service_code")),
                                 since=start, until=end, limit=MAX_RESULTS)["items"]
    return _respond(fmt, _requests(items), "service_requests", "request")


@bp.get("/requests/<service_request_id>.<fmt>")
@needs("read")
def request_detail(service_request_id, fmt):
    """One service request (a list of one, as the spec shows); 404 outside the jurisdiction."""
    fmt = _format(fmt)
    d = incidents.detail(db(), service_request_id, authz.scope_sql(principal(), "l"))
    return _respond(fmt, _requests([d]), "service_requests", "request")


def _report_limit() -> str:
    return current_app.config["GISGRID_REPORT_LIMIT"]


def _caller_key() -> str:
    p = getattr(g, "principal", None)
    return f"user:{p.username}" if p else request.remote_addr or "-"


def _coordinate(form, name: str, bound: float) -> float:
    raw = form.get(name, "").strip()
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be a number (WGS84 decimal degrees), got {raw!r}", field=name) from None
    if not math.isfinite(value) or not -bound <= value <= bound:
        raise InvalidInput(f"{name} must be between {-bound:g} and {bound:g}, got {raw}", field=name)
    return value


def _reporter(first: str, last: str) -> str | None:
    first, last = first.strip(), last.strip()
    if re.search(r"[\u3400-\u9fff]", first + last):
        return (last + first) or None          # 张 + 三 → 张三 (family name first)
    return " ".join(x for x in (first, last) if x) or None


@bp.post("/requests.<fmt>")
@needs("report")
@limited(_report_limit, key=_caller_key)
def request_create(fmt):
    """File a service request (form-urlencoded) as a gisgrid incident from a resident."""
    fmt = _format(fmt)
    if request.mimetype not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        raise InvalidInput("send the request form-urlencoded (Content-Type: application/x-www-form-urlencoded), "
                           f"got {request.mimetype or 'no content type'!r}", field="body")
    form = request.form
    if not getattr(g, "via_token", False):
        raise InvalidInput("api_key is required: a gisgrid API token with the 'report' scope "
                           "(gisgrid user token create)", field="api_key")
    header = request.headers.get("Authorization")
    if form.get("api_key") and header and header.strip() != f"Bearer {form['api_key'].strip()}":
        raise InvalidInput("api_key and the Authorization header name different tokens; send one", field="api_key")
    unknown = sorted(k for k in form if k not in POST_FIELDS and not re.fullmatch(r"attribute\[[^\]]*\](\[\])?", k))
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r}; fields: {', '.join(sorted(POST_FIELDS))}, attribute[…]",
                           field=unknown[0])
    code = form.get("service_code", "").strip()
    known = _catalogue()
    if not code:
        raise InvalidInput(f"service_code is required; service codes: {', '.join(sorted(known))}", field="service_code")
    if code not in known:
        raise InvalidInput(f"unknown service_code {code!r}; service codes: {', '.join(sorted(known))}",
                           field="service_code")
    missing = [k for k in ("lat", "long") if not form.get(k, "").strip()]
    if missing:
        if len(missing) == 2 and (form.get("address_string") or form.get("address_id")):
            raise InvalidInput("gisgrid needs a location: send lat and long (WGS84 decimal degrees); "
                               "address_string or address_id alone cannot be placed in a grid", field="lat")
        raise InvalidInput(f"lat and long are required (WGS84 decimal degrees); missing: {', '.join(missing)}",
                           field=missing[0])
    lat, lon = _coordinate(form, "lat", 90), _coordinate(form, "long", 180)
    s = db()
    out, created = incidents.report(
        s, principal().username, category=code, lon=lon, lat=lat, description=form.get("description", ""),
        address=form.get("address_string", "").strip() or None, source="resident",
        reporter=_reporter(form.get("first_name", ""), form.get("last_name", "")),
        idempotency_key=request.headers.get("Idempotency-Key") or None,
        duplicate_metres=settings().duplicate_metres, duplicate_hours=settings().duplicate_hours)
    s.commit()
    deadline = _iso(out.get("deadline"))
    notice = (f"已收到，事件编号 {out['code']}，{_status_notes(out)}，由 {_agency(out)} 办理"
              + (f"，受理时限 {deadline}" if deadline and out["state"] == "reported" else ""))
    return _respond(fmt, [{"service_request_id": out["code"], "service_notice": notice, "account_id": None}],
                    "service_requests", "request", 201 if created else 200)


@bp.route("/<path:rest>", methods=["GET", "POST"])
@public
def unknown_endpoint(rest):
    """Anything else under /open311/v2/: a 404 in the GeoReport format (it reveals nothing)."""
    raise NotFound(f"no Open311 endpoint {request.path!r}; endpoints: services.json|xml, "
                   "services/<service_code>.json|xml, requests.json|xml, requests/<service_request_id>.json|xml",
                   field="path")
