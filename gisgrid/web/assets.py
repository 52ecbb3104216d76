"""Every JS/CSS file the pages load is served from ``static/vendor`` (versions in
``static/vendor/VERSIONS.json``). folium's classes point at CDNs; :func:`localise_folium`
replaces those class-level lists once, at app start."""
from __future__ import annotations

import folium
import folium.plugins as plugins

V = "/static/vendor"
LEAFLET_JS = [("leaflet", f"{V}/leaflet/leaflet.js")]
LEAFLET_CSS = [("leaflet_css", f"{V}/leaflet/leaflet.css"), ("gisgrid_css", "/static/gisgrid.css")]
CLUSTER_JS = [("markerclusterjs", f"{V}/leaflet.markercluster/leaflet.markercluster.js")]
CLUSTER_CSS = [("markerclustercss", f"{V}/leaflet.markercluster/MarkerCluster.css"),
               ("markerclusterdefaultcss", f"{V}/leaflet.markercluster/MarkerCluster.Default.css")]


def localise_folium() -> None:
    # jQuery, Bootstrap and Font Awesome are only needed by folium.Icon, which gisgrid does not use.
    folium.Map.default_js = LEAFLET_JS
    folium.Map.default_css = LEAFLET_CSS
    for cls in (plugins.MarkerCluster, plugins.FastMarkerCluster):
        cls.default_js = CLUSTER_JS
        cls.default_css = CLUSTER_CSS
    plugins.HeatMap.default_js = [("leaflet-heat.js", f"{V}/leaflet.heat/leaflet-heat.js")]
    plugins.VectorGridProtobuf.default_js = [("vectorGrid", f"{V}/leaflet.vectorgrid/Leaflet.VectorGrid.bundled.min.js")]
    plugins.GeoMan.default_js = [("leaflet_geoman_js", f"{V}/leaflet-geoman/leaflet-geoman.min.js")]
    plugins.GeoMan.default_css = [("leaflet_geoman_css", f"{V}/leaflet-geoman/leaflet-geoman.css")]
