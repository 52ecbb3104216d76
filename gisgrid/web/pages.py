"""Pages. ``/`` is the one map (一张图) of the district, built with folium from local assets."""
from __future__ import annotations

import folium
import folium.plugins as plugins
from flask import Blueprint, Response

from gisgrid import authz
from gisgrid.layers import admin_areas, grids, incidents
from gisgrid.web import db, i18n, security, settings
from gisgrid.web.auth import needs, principal, public

bp = Blueprint("pages", __name__)

PAGE_GRID_LIMIT = 5000   # above this the page draws communities only (large layers go as tiles)
HOUSEHOLD_BINS = [(0, "#f7fbff"), (150, "#c6dbef"), (200, "#6baed6"), (250, "#2171b5"), (300, "#08306b")]
STATE_COLOURS = {"reported": "#d7301f", "accepted": "#fc8d59", "dispatched": "#fdbb84", "handling": "#e6550d",
                 "feedback": "#31a354", "evaluated": "#2b8cbe", "closed": "#999999"}


DOT_MARKER = ("function (row) { return L.marker(new L.LatLng(row[0], row[1]), "
              "{icon: L.divIcon({className: 'gg-dot', iconSize: [8, 8]})}); }")


def household_colour(n: int) -> str:
    colour = HOUSEHOLD_BINS[0][1]
    for lower, c in HOUSEHOLD_BINS:
        if n >= lower:
            colour = c
    return colour


@bp.get("/healthz")
@public
def healthz():
    """Liveness and database reachability, for load balancers and the tests (no data)."""
    from flask import jsonify
    from sqlalchemy import text

    db().execute(text("SELECT 1"))
    return jsonify({"ok": True})


FIELD_LABELS = ("online", "offline", "waiting", "sent", "grid", "unlinked", "duplicates", "sending", "saved_offline",
                "refused", "no_position", "dragged", "overdue", "act_start", "act_feedback", "feedback_note",
                "queue_empty")


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


@bp.get("/")
@needs("read")
def one_map():
    t = i18n.t
    s = db()
    who = principal()
    scope, grid_scope, area_scope = authz.scope_sql(who, "l"), authz.scope_sql(who, "g", grid_col="code"), \
        authz.admin_area_sql(who)
    district = admin_areas.district(s)
    cfg = settings()
    m = folium.Map(location=[30.6, 114.27], zoom_start=14, tiles=None, control_scale=True, prefer_canvas=False)
    m.options["max_zoom"] = 19
    if cfg.basemap_url:
        folium.TileLayer(cfg.basemap_url, attr=cfg.basemap_attribution or "basemap", name="basemap").add_to(m)
    if district is None:
        _bar(m, t("title", district="gisgrid"), t("no_data"))
        return _html(m)

    n_grids = grids.count_current(s, grid_scope)
    streets = admin_areas.features(s, "street", area_scope)
    communities = admin_areas.features(s, "community", area_scope)
    folium.GeoJson({"type": "FeatureCollection", "features": admin_areas.features(s, "district", area_scope)},
                   name=district.name,
                   style_function=lambda f: {"color": "#555", "weight": 2, "dashArray": "6 4", "fillOpacity": 0}).add_to(m)
    grid_feats = grids.summary(s, scope=grid_scope) if n_grids <= PAGE_GRID_LIMIT else []
    if grid_feats:
        folium.GeoJson(
            {"type": "FeatureCollection", "features": grid_feats}, name=t("grids"),
            style_function=lambda f: {"fillColor": household_colour(f["properties"]["households"]),
                                      "color": "#3182bd", "weight": 0.8, "fillOpacity": 0.65},
            highlight_function=lambda f: {"weight": 3, "color": "#e6550d"},
            tooltip=folium.GeoJsonTooltip(["name", "code", "households", "open_incidents"],
                                          aliases=[t("grid"), t("code"), t("households"), t("open")]),
        ).add_to(m)
    folium.GeoJson({"type": "FeatureCollection", "features": communities}, name=t("communities"),
                   style_function=lambda f: {"color": "#08306b", "weight": 2.5, "fillOpacity": 0},
                   tooltip=folium.GeoJsonTooltip(["name", "code"], aliases=[t("community"), t("code")])).add_to(m)
    folium.GeoJson({"type": "FeatureCollection", "features": streets}, name=t("streets"), show=False,
                   style_function=lambda f: {"color": "#54278f", "weight": 4, "fillOpacity": 0}).add_to(m)

    open_layer = folium.FeatureGroup(name=t("open_incidents"))
    open_pts = incidents.points(s, open_only=True, limit=5000, scope=scope)
    for p in open_pts:
        folium.CircleMarker([p["lat"], p["lon"]], radius=5, color=STATE_COLOURS[p["state"]], fill=True, fill_opacity=0.9,
                            weight=1, tooltip=f'{p["code"]} · {incidents.CATEGORIES.get(p["category"], p["category"])} · '
                                              f'{incidents.STATES[p["state"]]}').add_to(open_layer)
    open_layer.add_to(m)
    all_pts = incidents.points(s, limit=20_000, scope=scope)
    # folium's default callback needs Leaflet.awesome-markers; a plain dot needs nothing.
    plugins.FastMarkerCluster([[p["lat"], p["lon"]] for p in all_pts], name=t("all_incidents"), show=False,
                              callback=DOT_MARKER).add_to(m)
    folium.LayerControl(collapsed=False).add_to(m)

    bounds = _bounds(grid_feats or communities)
    if bounds:
        m.fit_bounds(bounds)
    households = sum(f["properties"]["households"] for f in grid_feats)
    note = t("stats", grids=n_grids, households=f"{households:,}", open=len(open_pts))
    if n_grids > PAGE_GRID_LIMIT:
        note += " " + t("too_many", n=n_grids)
    _bar(m, t("title", district=district.name), note, who)
    _legend(m, t("legend"))
    return _html(m)


def _bounds(features):
    import shapely
    from shapely.geometry import shape

    if not features:
        return None
    x0, y0, x1, y1 = shapely.total_bounds([shape(f["geometry"]) for f in features])
    return [[y0, x0], [y1, x1]]


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


def _legend(m, title: str) -> None:
    from markupsafe import escape

    rows = "".join(f'<div><i style="background:{c}"></i>{lo}+</div>' for lo, c in HOUSEHOLD_BINS)
    m.get_root().html.add_child(folium.Element(f'<div class="gg-legend"><b>{escape(title)}</b>{rows}</div>'))


def _html(m) -> Response:
    return Response(security.add_nonce(m.get_root().render()), mimetype="text/html")
