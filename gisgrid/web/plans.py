"""Plan API (网格调整方案): planners redraw grids. Views are thin: check access → parse →
:mod:`gisgrid.layers.plans` → serialise; every view needs the ``plan`` action and the plan's
scope must lie in the caller's jurisdiction (else 404)."""
from __future__ import annotations

from flask import Blueprint, jsonify, request

from gisgrid.errors import InvalidInput
from gisgrid.layers import plans
from gisgrid.web import db
from gisgrid.web.auth import needs, principal
from gisgrid.web.incidents import _json_body

bp = Blueprint("plans", __name__, url_prefix="/api")

_PLAN_ID = "{name: plan_id, in: path, required: true, schema: {type: integer, minimum: 1, maximum: 2147483647}}"
_COMMON = """        400: {$ref: '#/components/responses/BadRequest'}
        401: {$ref: '#/components/responses/Unauthenticated'}
        403: {$ref: '#/components/responses/Forbidden'}
        404: {$ref: '#/components/responses/NotFound'}"""


def _doc(text: str) -> str:
    return text.replace("PLAN_ID", _PLAN_ID).replace("        COMMON", _COMMON)


def _documented(view):
    view.__doc__ = _doc(view.__doc__)
    return view


@bp.get("/plans")
@needs("plan")
@_documented
def plan_list():
    """Plans whose scope lies in the caller's jurisdiction, newest first.
    ---
    get:
      summary: Grid plans (网格调整方案)
      parameters:
        - {name: state, in: query, required: false, schema: {type: string,
           enum: [draft, review, published, discarded, rolled_back]}}
      responses:
        200:
          description: plans
          content: {application/json: {schema: {type: array, items: {type: object}}}}
        COMMON
    """
    return jsonify(plans.list_plans(db(), principal(), request.args.get("state")))


@bp.post("/plans")
@needs("plan")
@_documented
def plan_create():
    """A draft plan for a community or a street, starting as a copy of its current grids.
    ---
    post:
      summary: Start a plan (新建方案)
      requestBody:
        required: true
        content:
          application/json:
            schema:
              type: object
              required: [scope]
              additionalProperties: false
              properties:
                scope: {type: string, description: "12-digit code of a community or a street"}
                name: {type: string, maxLength: 200}
                target: {type: integer, minimum: 1, maximum: 100000, description: "households per grid"}
                tolerance: {type: number, minimum: 0, exclusiveMaximum: true, maximum: 1}
      responses:
        201: {description: the plan, content: {application/json: {schema: {type: object}}}}
        COMMON
        422: {$ref: '#/components/responses/Unprocessable'}
    """
    body = _json_body({"scope", "name", "target", "tolerance"})
    if "scope" not in body:
        raise InvalidInput("missing required field: scope", field="scope")
    s = db()
    out = plans.create(s, principal(), body["scope"], body.get("name"), target=body.get("target"),
                       tolerance=body.get("tolerance", 0.10))
    s.commit()
    return jsonify(out), 201


@bp.get("/plans/<int:plan_id>")
@needs("plan")
@_documented
def plan_detail(plan_id):
    """The plan: state, cells (GeoJSON features with code and version), edit history.
    ---
    get:
      summary: One plan (方案)
      parameters: [PLAN_ID]
      responses:
        200: {description: the plan, content: {application/json: {schema: {type: object}}}}
        COMMON
    """
    return jsonify(plans.get(db(), principal(), plan_id))


@bp.get("/plans/<int:plan_id>/check")
@needs("plan")
@_documented
def plan_check(plan_id):
    """Every check on the plan's cells: a report and the problems as GeoJSON features.
    ---
    get:
      summary: Check a plan (检查：缝隙、重叠、碎片、户数、紧凑度、跨主干道)
      parameters: [PLAN_ID]
      responses:
        200: {description: the report, content: {application/json: {schema: {type: object,
              required: [ok, errors, warnings, counts, cells, features]}}}}
        COMMON
    """
    return jsonify(plans.check(db(), principal(), plan_id))


@bp.post("/plans/<int:plan_id>/edits")
@needs("plan")
@_documented
def plan_edit(plan_id):
    """One edit of a draft plan. ``versions`` gives the version of every cell the edit touches;
    a stale one is a 409. The answer carries the new cells and the check report.
    ---
    post:
      summary: Edit cells (替换、重塑、分割、合并)
      parameters: [PLAN_ID]
      requestBody:
        required: true
        content:
          application/json:
            schema:
              type: object
              required: [op, versions]
              additionalProperties: false
              properties:
                op: {type: string, enum: [replace, reshape, split, merge]}
                code: {type: string}
                codes: {type: array, items: {type: string}}
                geometry: {type: object, description: "GeoJSON Polygon/MultiPolygon, EPSG:4326"}
                line: {type: object, description: "GeoJSON LineString, EPSG:4326 (split)"}
                versions: {type: object, additionalProperties: {type: integer}}
                note: {type: string, maxLength: 500}
      responses:
        200: {description: the plan's cells and the check report, content: {application/json: {schema: {type: object}}}}
        COMMON
        409: {$ref: '#/components/responses/Conflict'}
    """
    body = _json_body({"op", "code", "codes", "geometry", "line", "versions", "note"})
    s = db()
    out = plans.edit(s, principal(), plan_id, body.pop("op", None), body)
    s.commit()
    return jsonify(out)


@bp.post("/plans/<int:plan_id>/undo")
@needs("plan")
@_documented
def plan_undo(plan_id):
    """Undo the last edit not yet undone.
    ---
    post:
      summary: Undo (撤销)
      parameters: [PLAN_ID]
      responses:
        200: {description: the plan's cells and the check report, content: {application/json: {schema: {type: object}}}}
        COMMON
        409: {$ref: '#/components/responses/Conflict'}
    """
    s = db()
    out = plans.undo(s, principal(), plan_id)
    s.commit()
    return jsonify(out)


@bp.post("/plans/<int:plan_id>/propose")
@needs("plan")
@_documented
def plan_propose(plan_id):
    """Replace the draft's cells with a proposal: contiguous cells of about ``target``
    households built from buildings, roads as barriers; ``keep_current`` keeps today's grids
    where they are within tolerance. Every part outside tolerance is named in ``exceptions``.
    ---
    post:
      summary: Propose grids (自动划分)
      parameters: [PLAN_ID]
      requestBody:
        required: false
        content:
          application/json:
            schema:
              type: object
              additionalProperties: false
              properties:
                target: {type: integer, minimum: 1, maximum: 100000}
                tolerance: {type: number, minimum: 0, exclusiveMaximum: true, maximum: 1}
                keep_current: {type: boolean}
                seed: {type: integer, minimum: 0, maximum: 4294967295}
      responses:
        200: {description: cells, check report and proposal summary, content: {application/json: {schema: {type: object}}}}
        COMMON
        409: {$ref: '#/components/responses/Conflict'}
    """
    body = _json_body({"target", "tolerance", "keep_current", "seed"}) if request.get_data() else {}
    keep = body.get("keep_current", False)
    if not isinstance(keep, bool):
        raise InvalidInput(f"keep_current must be true or false, got {keep!r}", field="keep_current")
    seed = body.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2 ** 32:
        raise InvalidInput(f"seed must be an integer 0..4294967295, got {seed!r}", field="seed")
    s = db()
    out = plans.propose(s, principal(), plan_id, target=body.get("target"), tolerance=body.get("tolerance"),
                        keep_current=keep, seed=seed)
    s.commit()
    return jsonify(out)


@bp.get("/plans/<int:plan_id>/diff")
@needs("plan")
@_documented
def plan_diff(plan_id):
    """What publishing would change: records changing grid per layer (per old and new cell),
    staff assignments kept and ended, changed areas as GeoJSON.
    ---
    get:
      summary: Changes before publishing (发布前差异)
      parameters: [PLAN_ID]
      responses:
        200: {description: the diff, content: {application/json: {schema: {type: object,
              required: [layers, staff_assignments, grids, changed_areas]}}}}
        COMMON
    """
    return jsonify(plans.diff(db(), principal(), plan_id))


@bp.post("/plans/<int:plan_id>/actions/<action>")
@needs("plan")
@_documented
def plan_action(plan_id, action):
    """Move the plan: ``submit`` (draft → review), ``reopen`` (review → draft), ``discard``,
    ``publish`` (review → published: one transaction, refused while a check finds an error),
    ``rollback`` (published → rolled_back: the replaced grids come back).
    ---
    post:
      summary: Submit, reopen, discard, publish, roll back (提交、退回、放弃、发布、回滚)
      parameters:
        - PLAN_ID
        - {name: action, in: path, required: true, schema: {type: string,
           enum: [submit, reopen, discard, publish, rollback]}}
      responses:
        200: {description: the new state, content: {application/json: {schema: {type: object, required: [id, state]}}}}
        COMMON
        409: {$ref: '#/components/responses/Conflict'}
    """
    s, p = db(), principal()
    if action == "publish":
        out = plans.publish(s, p, plan_id)
    elif action == "rollback":
        out = plans.rollback(s, p, plan_id)
    else:
        out = plans.transition(s, p, plan_id, action)
    s.commit()
    return jsonify(out)
