"""The one map's data API: an area's panel, the KPI strip, search. Thin views over
:mod:`gisgrid.layers.summaries`; every figure is aggregated in SQL inside the caller's
jurisdiction and takes the map's filters (``since``, ``until``, ``category``, ``state``).

The figures are read on the tile engine (``db(tiles=True)``): read-only statements, each planned
for its own box or area and never JIT-compiled (a city-wide statement looks expensive to the
planner, which would spend a second and more compiling it)."""
from __future__ import annotations

from flask import Blueprint, jsonify, request

from gisgrid.errors import InvalidInput
from gisgrid.layers import incidents, summaries
from gisgrid.layers import tiles as tl
from gisgrid.web import db
from gisgrid.web.auth import needs, principal

bp = Blueprint("onemap", __name__, url_prefix="/api")

_FILTER_PARAMS = """
        - {name: since, in: query, schema: {type: string, format: date-time}}
        - {name: until, in: query, schema: {type: string, format: date-time}}
        - {name: category, in: query, schema: {type: string}, description: "comma-separated category codes"}
        - {name: state, in: query, schema: {type: string}, description: "comma-separated states"}"""


def _args(extra: set[str]) -> tl.Filters:
    allowed = set(tl.FILTER_KEYS) | extra
    unknown = sorted(set(request.args) - allowed)
    if unknown:
        raise InvalidInput(f"unknown query parameter {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}",
                           field=unknown[0])
    return tl.parse_filters(request.args, (c["code"] for c in incidents.categories(db())))


def _doc(view):
    view.__doc__ = view.__doc__.replace("{filters}", _FILTER_PARAMS)
    return view


@bp.get("/areas/<code>/summary")
@needs("read")
@_doc
def area_summary(code):
    """The side panel of a grid, community, street or district.
    ---
    get:
      summary: Area panel (网格/社区/街道详情)：队伍、户数、人口、事件、化解率、满意率
      parameters:
        - {name: code, in: path, required: true, schema: {type: string, pattern: '^[0-9]{12,20}$'}}{filters}
      responses:
        200:
          description: the area's figures inside the caller's jurisdiction
          content:
            application/json:
              schema:
                allOf:
                  - {$ref: '#/components/schemas/IncidentFigures'}
                  - type: object
                    required: [code, name, level, households, residents, by_state, by_category, recent, team]
                    properties:
                      code: {type: string}
                      name: {type: string}
                      level: {type: string, enum: [grid, community, street, district]}
                      households: {type: integer}
                      buildings: {type: integer}
                      residents: {type: integer}
                      by_state: {type: array, items: {type: object}}
                      by_category: {type: array, items: {type: object}}
                      recent: {type: array, items: {type: object}}
                      team: {type: array, items: {type: object}}
        400: {$ref: '#/components/responses/BadRequest'}
        401: {$ref: '#/components/responses/Unauthenticated'}
        404: {$ref: '#/components/responses/NotFound'}
    """
    out = summaries.summary(db(tiles=True), code, principal(), _args(set()))
    out.pop("id")
    return jsonify(out)


@bp.get("/kpi")
@needs("read")
@_doc
def kpi():
    """The KPI strip for the map view (``bbox``) or a selected area (``area``).
    ---
    get:
      summary: KPI (今日新增、未办结、超期、化解率、满意率)
      parameters:
        - {name: bbox, in: query, schema: {type: string}, description: "west,south,east,north in degrees"}
        - {name: area, in: query, schema: {type: string}, description: "a grid or admin area code"}{filters}
      responses:
        200:
          description: the figures
          content: {application/json: {schema: {$ref: '#/components/schemas/IncidentFigures'}}}
        400: {$ref: '#/components/responses/BadRequest'}
        401: {$ref: '#/components/responses/Unauthenticated'}
        404: {$ref: '#/components/responses/NotFound'}
    """
    filters = _args({"bbox", "area"})
    return jsonify(summaries.kpi(db(tiles=True), principal(), bbox=summaries.parse_bbox(request.args.get("bbox")),
                                 code=request.args.get("area") or None, filters=filters))


@bp.get("/search")
@needs("read")
def search():
    """Grids, admin areas, buildings (by address) and incidents (by number).
    ---
    get:
      summary: Search (搜索网格编码、地址、事件编号)
      parameters:
        - {name: q, in: query, required: true, schema: {type: string, minLength: 1, maxLength: 100}}
      responses:
        200:
          description: matches, at most a few of each kind
          content:
            application/json:
              schema:
                type: array
                items:
                  type: object
                  required: [kind, code, label, lon, lat, zoom]
                  properties:
                    kind: {type: string, enum: [grid, district, street, community, building, incident]}
                    code: {type: string}
                    label: {type: string}
                    lon: {type: number, nullable: true}
                    lat: {type: number, nullable: true}
                    zoom: {type: integer}
        400: {$ref: '#/components/responses/BadRequest'}
        401: {$ref: '#/components/responses/Unauthenticated'}
    """
    unknown = sorted(set(request.args) - {"q"})
    if unknown:
        raise InvalidInput(f"unknown query parameter {unknown[0]!r}; allowed: q", field=unknown[0])
    return jsonify(summaries.search(db(), principal(), request.args.get("q", "")))
