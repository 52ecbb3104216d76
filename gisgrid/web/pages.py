"""Pages. ``/`` is the one map (一张图) of the district, built with folium from local assets."""
from __future__ import annotations

import folium
from folium.elements import MacroElement
from folium.template import Template
from flask import Blueprint, Response

from gisgrid import authz
from gisgrid.layers import admin_areas, grids, incidents
from gisgrid.web import db, i18n, security, settings
from gisgrid.web.auth import needs, principal, public

bp = Blueprint("pages", __name__)

HOUSEHOLD_BINS = [(0, "#f7fbff"), (150, "#c6dbef"), (200, "#6baed6"), (250, "#2171b5"), (300, "#08306b")]
STATE_COLOURS = {"reported": "#d7301f", "accepted": "#fc8d59", "dispatched": "#fdbb84", "handling": "#e6550d",
                 "feedback": "#31a354", "evaluated": "#2b8cbe", "closed": "#999999"}


@bp.get("/healthz")
@public
def healthz():
    """Liveness and database reachability, for load balancers and the tests (no data)."""
    from flask import current_app, jsonify

    current_app.extensions["gisgrid"]["direct_connections"].run(lambda conn: conn.execute("SELECT 1"), retry=True)
    return jsonify({"ok": True})


FIELD_LABELS = ("online", "offline", "waiting", "sent", "grid", "unlinked", "duplicates", "sending", "saved_offline",
                "refused", "no_position", "dragged", "overdue", "act_start", "act_feedback", "feedback_note",
                "queue_empty", "tab_patrol", "checkin", "checkin_ok", "checkin_rejected", "distance", "allowed", "no_gps",
                "points_empty", "radius")


@bp.get("/field")
@needs("report")
def field():
    """The phone page of field staff: report with position, photo, offline queue; their queue."""
    from flask import render_template

    from sqlalchemy import text

    where, params = authz.scope_sql(principal(), grid_col="code")
    centre = db().execute(text("SELECT ST_Y(c), ST_X(c) FROM (SELECT ST_Centroid(ST_Collect(geom)) AS c FROM grid "
                               f"WHERE valid_to IS NULL AND {where}) x"), params).first()
    config = {"labels": {k: i18n.t(k) for k in FIELD_LABELS}, "basemap": settings().basemap_url or None,
              "centre": [centre[0], centre[1]] if centre and centre[0] is not None else [30.6, 114.27]}
    return render_template("field.html", t=i18n.t, lang=i18n.lang(), config=config, nonce=security.nonce())


PLANNER_LABELS = ("planner_title", "plan", "new_plan", "scope", "propose", "keep_current", "undo", "merge", "split",
                  "submit_plan", "reopen_plan", "publish", "rollback", "discard", "diff", "check", "checks_ok",
                  "checks_bad", "cell", "households", "deviation", "edit_mode", "reshape", "replace", "target",
                  "tolerance", "state", "exceptions", "moved", "changes", "select_two", "select_one", "done",
                  "compactness", "gap", "overlap", "invalid_edge", "outside", "fragmented", "empty", "sliver",
                  "road_crossing", "draw_split")


@bp.get("/planner")
@needs("plan")
def planner():
    """The planner page: open or start a plan, edit cells on the map (Leaflet-Geoman), see
    households, deviation and the checks live, ask for a proposal, review the diff, publish."""
    from flask import render_template, request

    communities = admin_areas.features(db(), "community", authz.admin_area_sql(principal()))
    config = {"labels": {k: i18n.t(k) for k in PLANNER_LABELS}, "basemap": settings().basemap_url or None,
              "communities": [f["properties"] for f in communities
                              if authz.covers(principal(), admin_areas.chain(f["properties"]["code"]))],
              "plan": request.args.get("plan", type=int), "lang": i18n.lang()}
    return render_template("planner.html", t=i18n.t, lang=i18n.lang(), config=config, nonce=security.nonce())


#: how the grids can be coloured: measure → (label key, classes as (lower bound, colour))
MEASURES = {
    "households": ("measure_households", HOUSEHOLD_BINS),
    "open": ("measure_open", [(0, "#ffffcc"), (1, "#fed976"), (3, "#fd8d3c"), (6, "#e31a1c"), (10, "#800026")]),
    "overdue": ("measure_overdue", [(0, "#f7f7f7"), (1, "#fdae6b"), (2, "#f16913"), (4, "#a63603")]),
    "resolution_rate": ("measure_resolution_rate", [(0, "#d7191c"), (0.6, "#fdae61"), (0.75, "#a6d96a"),
                                                    (0.9, "#1a9641")]),
}
#: layers drawn when the page opens (the others are one click away in the layer switcher)
SHOWN = ("admin_areas", "grids", "incidents")
POLL_MS = 5000
PAGE_LABELS = ("kpi_new_today", "kpi_open", "kpi_overdue", "kpi_resolution", "kpi_satisfaction", "kpi_view",
               "kpi_selected", "measure", "since", "until", "all_categories", "all_states", "search_placeholder",
               "search", "team", "households", "buildings", "residents", "received", "by_state", "by_category",
               "recent", "no_results", "latest", "close", "resolution_rate", "satisfaction_rate", "open", "overdue",
               "level_grid", "level_community", "level_street", "level_district", "grids_in_area", "no_team",
               "bin_hint", "legend_none", "phone", "layers")


class OneMap(MacroElement):
    """The one map's client (``static/onemap.js``): vector tile layers, switcher, panel, KPI,
    filters, search and live updates, started on the folium map with the page's config."""
    _template = Template("""
        {% macro script(this, kwargs) %}
        gisgrid.oneMap({{ this._parent.get_name() }}, {{ this.config|tojson }});
        {% endmacro %}""")
    default_js = [("vectorgrid", "/static/vendor/leaflet.vectorgrid/Leaflet.VectorGrid.bundled.min.js"),
                  ("onemap", "/static/onemap.js")]

    def __init__(self, config: dict):
        super().__init__()
        self._name = "OneMap"
        self.config = config

    def render(self, **kwargs):
        figure = self.get_root()
        for name, url in self.default_js:
            figure.header.add_child(folium.JavascriptLink(url), name=name)
        super().render(**kwargs)


@bp.get("/")
@needs("read")
def one_map():
    """The one map (一张图): every layer as vector tiles, grids coloured by a chosen measure,
    incidents binned at low zoom and as points at high zoom, the side panel of a clicked area,
    the KPI strip of the view, filters, search, live updates. Nothing is sent as GeoJSON: the
    page carries its configuration only, data come as tiles and aggregated figures."""
    from gisgrid.layers import tiles as tl

    t = i18n.t
    s = db()
    who = principal()
    district = admin_areas.district(s)
    cfg = settings()
    m = folium.Map(location=[30.6, 114.27], zoom_start=12, tiles=None, control_scale=True, prefer_canvas=False)
    m.options["max_zoom"] = 19
    if cfg.basemap_url:
        folium.TileLayer(cfg.basemap_url, attr=cfg.basemap_attribution or "basemap", name="basemap").add_to(m)
    if district is None:
        _bar(m, t("title", district="gisgrid"), t("no_data"))
        return _html(m)
    ext = tl.extent(s, who)
    if ext:
        m.location = [ext[1][1], ext[1][0]]
    lang = i18n.lang()
    cats = incidents.categories(s)
    config = {
        "lang": lang,
        "layers": [{"name": name, "label": t(f"layer_{name}"), "geometry": lay.geometry,
                    "points_from": lay.points_from, "filtered": lay.filtered, "show": name in SHOWN,
                    "url": f"/tiles/{name}/{{z}}/{{x}}/{{y}}.pbf"} for name, lay in tl.LAYERS.items()],
        "index": "/tiles/index.json", "kpi": "/api/kpi", "summary": "/api/areas/{code}/summary",
        "search": "/api/search", "latest": "/api/incidents?limit=5",
        "measures": {k: {"label": t(key), "classes": classes} for k, (key, classes) in MEASURES.items()},
        "states": {k: [v if lang == "zh" else k, STATE_COLOURS[k]] for k, v in incidents.STATES.items()},
        "categories": [[c["code"], c["name"] if lang == "zh" else (c["name_en"] or c["code"])] for c in cats],
        "roles": {k: v for k, v in staff_roles().items()},
        "labels": {k: t(k) for k in PAGE_LABELS},
        "poll_ms": POLL_MS,
        "bounds": [[ext[0][1], ext[0][0]], [ext[0][3], ext[0][2]]] if ext else None,
        # patrol coverage and a worker's trail (issue 8): GeoJSON overlays in the same layer switcher
        "overlays": _patrol_overlays(s, who),
    }
    _bar(m, t("title", district=district.name), t("one_map_note"), who)
    m.get_root().html.add_child(folium.Element(_controls_html()))
    OneMap(config).add_to(m)
    return _html(m)


def staff_roles() -> dict[str, str]:
    from gisgrid.layers.staff import ROLES

    return ROLES


PAGE_GRID_LIMIT = 5000   # most grids the patrol overlays draw as GeoJSON (the rest of the map is tiles)
UNCOVERED_METRES = 300


def _patrol_overlays(s, who) -> list[dict]:
    """The patrol overlays of the layer switcher, fetched by the page when switched on: the
    areas no patrol point reaches (straight line; offered up to :data:`PAGE_GRID_LIMIT` grids in
    the caller's jurisdiction), and with ``?trail=<worker>&day=YYYY-MM-DD`` that worker's
    check-ins of the day joined in time order (shown at once). Patrol points themselves are a
    tile layer."""
    from datetime import date
    from urllib.parse import urlencode

    from flask import request

    from gisgrid.errors import InvalidInput

    t = i18n.t
    out = []
    if grids.count_current(s, authz.scope_sql(who, "g", grid_col="code")) <= PAGE_GRID_LIMIT:
        out.append({"name": "uncovered", "label": t("uncovered", d=UNCOVERED_METRES), "show": False,
                    "url": "/api/patrol/uncovered?" + urlencode({"distance": UNCOVERED_METRES}),
                    "style": {"color": "#a50f15", "weight": 0.5, "fillColor": "#de2d26", "fillOpacity": 0.35}})
    worker, day = request.args.get("trail"), request.args.get("day")
    if worker and day:
        try:
            date.fromisoformat(day)
        except ValueError:
            raise InvalidInput(f"day must be a date YYYY-MM-DD, got {day!r}", field="day") from None
        out.append({"name": "trail", "label": t("trail", worker=worker, day=day), "show": True,
                    "url": "/api/patrol/trail?" + urlencode({"worker": worker, "day": day}),
                    "style": {"color": "#e6550d", "weight": 4, "fillColor": "#e6550d", "fillOpacity": 1}})
    return out


def _controls_html() -> str:
    """The page's fixed parts: KPI strip, filter and search bar, side panel, legend, latest
    incidents. onemap.js fills them; every label comes from the translation catalogue."""
    from markupsafe import escape

    t = lambda k: escape(i18n.t(k))  # noqa: E731
    kpis = "".join(f'<div class="gg-kpi-item"><b id="gg-kpi-{k}">–</b><span>{t("kpi_" + k)}</span></div>'
                   for k in ("new_today", "open", "overdue", "resolution", "satisfaction"))
    return (
        f'<div class="gg-kpi" id="gg-kpi"><div class="gg-kpi-scope" id="gg-kpi-scope">{t("kpi_view")}</div>{kpis}</div>'
        '<div class="gg-tools" id="gg-tools">'
        f'<label>{t("measure")} <select id="gg-measure"></select></label>'
        f'<label>{t("since")} <input type="date" id="gg-since"></label>'
        f'<label>{t("until")} <input type="date" id="gg-until"></label>'
        f'<select id="gg-category"><option value="">{t("all_categories")}</option></select>'
        f'<select id="gg-state"><option value="">{t("all_states")}</option></select>'
        f'<form id="gg-search-form"><input id="gg-search" type="search" placeholder="{t("search_placeholder")}">'
        f'<button type="submit">{t("search")}</button></form>'
        '<ul id="gg-search-results" class="gg-results"></ul></div>'
        '<div class="gg-panel" id="gg-panel" hidden></div>'
        f'<div class="gg-latest" id="gg-latest"><b>{t("latest")}</b><ul id="gg-latest-list"></ul></div>'
        '<div class="gg-legend" id="gg-legend"></div>')


def _bar(m, title: str, note: str, who=None) -> None:
    from flask_wtf.csrf import generate_csrf
    from markupsafe import escape

    from gisgrid.layers.users import ROLES

    account = ""
    if who is not None:
        account = (f'<p>{escape(i18n.t("signed_in_as", user=who.username, role=ROLES[who.role]))} · '
                   f'<form method="post" action="/logout"><input type="hidden" name="csrf_token" '
                   f'value="{generate_csrf()}"><button class="gg-link">{escape(i18n.t("logout"))}</button></form></p>')
    m.get_root().html.add_child(folium.Element(
        f'<div class="gg-bar" id="gg-title"><h1>{escape(title)}</h1><p>{escape(note)}</p>{account}</div>'))


def _html(m) -> Response:
    return Response(security.add_nonce(m.get_root().render()), mimetype="text/html")
