"""The OpenAPI 3 document, generated from the API views: each view's docstring carries its
operation after a ``---`` line (apispec's Flask plugin reads it), the shared schemas are here.
Served at ``/api/openapi.json``; schemathesis fuzzes the API against it in the tests."""
from __future__ import annotations

from apispec import APISpec
from apispec_webframeworks.flask import FlaskPlugin

ERROR = {"type": "object", "required": ["error", "message"], "properties": {
    "error": {"type": "string"}, "message": {"type": "string"}, "record": {"type": "string"},
    "field": {"type": "string", "nullable": True}}}
FEATURE_COLLECTION = {"type": "object", "required": ["type", "features"], "properties": {
    "type": {"type": "string", "enum": ["FeatureCollection"]},
    "features": {"type": "array", "items": {"type": "object", "required": ["type", "geometry", "properties"],
                                            "properties": {"type": {"type": "string", "enum": ["Feature"]},
                                                           "geometry": {"type": "object"},
                                                           "properties": {"type": "object"}}}}}}
RESIDENT = {"type": "object", "required": ["code", "name", "id_number", "phone"], "properties": {
    "code": {"type": "string"}, "name": {"type": "string"},
    "gender": {"type": "string", "enum": ["M", "F"], "nullable": True},
    "birth_date": {"type": "string", "format": "date", "nullable": True},
    "id_number": {"type": "string", "nullable": True, "description": "masked unless unmasked with a reason"},
    "phone": {"type": "string", "nullable": True}, "tags": {"type": "array", "items": {"type": "string"}},
    "building_code": {"type": "string", "nullable": True},
    **{k: {"type": "string", "nullable": True} for k in ("grid_code", "community_code", "street_code", "district_code")}}}
INCIDENT = {"type": "object", "required": ["code", "category", "state", "level", "lon", "lat", "allowed"],
            "properties": {
                "code": {"type": "string"}, "category": {"type": "string"}, "category_name": {"type": "string"},
                "state": {"type": "string", "enum": ["reported", "accepted", "dispatched", "handling", "feedback",
                                                     "evaluated", "closed"]},
                "state_name": {"type": "string"},
                "level": {"type": "string", "enum": ["grid", "community", "street", "district"]},
                "lon": {"type": "number"}, "lat": {"type": "number"},
                "grid_code": {"type": "string", "nullable": True}, "overdue": {"type": "boolean", "nullable": True},
                "events": {"type": "array", "items": {"type": "object"}},
                "photos": {"type": "array", "items": {"type": "string"}},
                "team": {"type": "array", "items": {"type": "object"}},
                "allowed": {"type": "array", "items": {"type": "string"}},
                "possible_duplicates": {"type": "array", "items": {"type": "object"}}}}
CHECKIN = {"type": "object", "required": ["point", "worker", "at", "distance_m", "allowed_m", "accepted", "status"],
           "properties": {
               "point": {"type": "string"}, "point_name": {"type": "string"}, "route": {"type": "string", "nullable": True},
               "worker": {"type": "string"}, "team": {"type": "string", "nullable": True},
               "at": {"type": "string", "format": "date-time"}, "received_at": {"type": "string", "format": "date-time"},
               "accuracy_m": {"type": "number", "nullable": True}, "distance_m": {"type": "number"},
               "allowed_m": {"type": "number"}, "accepted": {"type": "boolean"},
               "status": {"type": "string", "enum": ["accepted", "rejected"]},
               "lon": {"type": "number"}, "lat": {"type": "number"}, "grid_code": {"type": "string", "nullable": True}}}
#: the tail of a docstring for a GET that answers with rows as JSON, CSV or XLSX (``format``):
#: its last parameters and its responses
TABLE_GET = """
        - {name: format, in: query, schema: {type: string, enum: [json, csv, xlsx], default: json}}
        - {name: lang, in: query, schema: {type: string, enum: [zh, en], default: zh}}
      responses:
        200:
          description: one row per area or subject
          content:
            application/json: {schema: {type: array, items: {type: object}}}
            text/csv: {schema: {type: string}}
            application/vnd.openxmlformats-officedocument.spreadsheetml.sheet: {schema: {type: string, format: binary}}
        400: {$ref: '#/components/responses/BadRequest'}
        401: {$ref: '#/components/responses/Unauthenticated'}
        403: {$ref: '#/components/responses/Forbidden'}
"""
PROBLEM = {"type": "object", "required": ["row", "field", "value", "reason"], "properties": {
    "row": {"type": "integer", "nullable": True, "description": "line in a sheet (header = 1) or feature number; "
                                                               "null: the whole file"},
    "field": {"type": "string", "nullable": True}, "value": {"type": "string", "nullable": True},
    "reason": {"type": "string"}}}
IMPORT_REPORT = {"type": "object", "required": ["layer", "file", "mode", "rows", "valid", "written", "problems"],
                 "properties": {
                     "layer": {"type": "string"}, "file": {"type": "string"}, "mode": {"type": "string"},
                     "crs": {"type": "string", "nullable": True},
                     **{k: {"type": "integer"} for k in ("rows", "valid", "inserted", "updated", "deleted", "skipped")},
                     "written": {"type": "boolean"}, "dry_run": {"type": "boolean"},
                     "problems": {"type": "array", "items": PROBLEM}, "notes": {"type": "array", "items": {"type": "string"}}}}
FIGURES = {"type": "object", "required": ["new_today", "received", "open", "overdue", "resolved"], "properties": {
    **{k: {"type": "integer"} for k in ("new_today", "received", "open", "overdue", "resolved")},
    "resolution_rate": {"type": "number", "nullable": True, "description": "化解率, resolved / received"},
    "satisfaction_rate": {"type": "number", "nullable": True, "description": "满意率, 4–5 of all evaluations"}}}
GRID_REF = {"type": "object", "nullable": True, "properties": {
    "id": {"type": "integer"}, "code": {"type": "string"},
    **{k: {"type": "string"} for k in ("community_code", "street_code", "district_code")}}}


def build(app) -> dict:
    spec = APISpec(title="gisgrid API", version="1", openapi_version="3.0.3", plugins=[FlaskPlugin()],
                   info={"description": "Grid-mapping for community governance (网格化管理). Authenticate with "
                                        "'Authorization: Bearer <token>' (`gisgrid user token create`) or a session."},
                   security=[{"bearer": []}])
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    for name, schema in (("Error", ERROR), ("FeatureCollection", FEATURE_COLLECTION), ("Resident", RESIDENT),
                         ("GridRef", GRID_REF), ("Incident", INCIDENT), ("Checkin", CHECKIN),
                         ("ImportReport", IMPORT_REPORT), ("IncidentFigures", FIGURES)):
        spec.components.schema(name, schema)
    for response, desc in (("BadRequest", "invalid parameter"), ("Unauthenticated", "no or bad credentials"),
                           ("Forbidden", "the role or token may not do this"),
                           ("NotFound", "nothing of the caller's jurisdiction"),
                           ("Conflict", "the state does not allow it (the allowed actions are named)"),
                           ("Unprocessable", "a code that names nothing known"),
                           ("TooMany", "rate limit reached; retry later"),
                           ("TooLarge", "the upload is over the size limit")):
        spec.components.response(response, {"description": desc, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
    with app.test_request_context():
        for endpoint, view in sorted(app.view_functions.items()):
            if endpoint.split(".")[0] in ("api", "incidents", "patrol", "plans", "transfer", "onemap") and endpoint != "api.openapi_document" \
                    and view.__doc__ and "---" in view.__doc__:
                spec.path(view=view, app=app)
    return spec.to_dict()
