/* The one map (一张图): vector tile layers (Leaflet.VectorGrid), layer switcher, grids coloured by
 * a measure, the side panel of a clicked area, the KPI strip, filters, search, live updates.
 * Started by the page with gisgrid.oneMap(map, config); every label comes from config.labels.
 * Data come as tiles and aggregated figures from the API: the page never sums records. */
(function () {
  "use strict";
  var gisgrid = window.gisgrid = window.gisgrid || {};

  function qs(params) {
    var parts = [];
    Object.keys(params).sort().forEach(function (k) {
      if (params[k] !== undefined && params[k] !== null && params[k] !== "") {
        parts.push(encodeURIComponent(k) + "=" + encodeURIComponent(params[k]));
      }
    });
    return parts.length ? "?" + parts.join("&") : "";
  }

  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") { e.textContent = attrs[k]; } else { e.setAttribute(k, attrs[k]); }
    });
    (children || []).forEach(function (c) { if (c) { e.appendChild(c); } });
    return e;
  }

  function getJSON(url) {
    return fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}}).then(function (r) {
      if (!r.ok) { throw new Error(url + " → " + r.status); }
      return r.json();
    });
  }

  function pct(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%"; }

  function classColour(classes, value) {
    if (value === null || value === undefined || isNaN(value)) { return "#dddddd"; }
    var colour = classes[0][1];
    classes.forEach(function (c) { if (value >= c[0]) { colour = c[1]; } });
    return colour;
  }

  gisgrid.oneMap = function (map, cfg) {
    var L_ = cfg.labels;
    var state = {filters: {}, measure: "households", versions: {}, selected: null};
    var layers = {};
    var byName = {}, categoryNames = {};
    cfg.layers.forEach(function (l) { byName[l.name] = l; });
    cfg.categories.forEach(function (c) { categoryNames[c[0]] = c[1]; });

    function measureValue(p) {
      if (state.measure === "resolution_rate") { return p.received ? p.resolved / p.received : null; }
      return p[state.measure];
    }

    function dominantState(p) {
      var best = null, n = -1;
      Object.keys(cfg.states).forEach(function (s) {
        if ((p[s] || 0) > n && (p[s] || 0) > 0 && (p.open === 0 || s !== "closed" && s !== "evaluated")) {
          best = s; n = p[s];
        }
      });
      return best || "closed";
    }

    var styles = {
      admin_areas: function (p) {
        var w = {district: 3, street: 2.5, community: 1.5}[p.level] || 1;
        return {weight: w, color: p.level === "community" ? "#08306b" : "#54278f", fill: false,
                dashArray: p.level === "district" ? "6 4" : null, className: "gg-area gg-area-" + p.level};
      },
      grids: function (p) {
        return {fill: true, fillColor: classColour(cfg.measures[state.measure].classes, measureValue(p)),
                fillOpacity: 0.6, color: "#3182bd", weight: p.level === "grid" ? 0.8 : 0.6,
                className: "gg-grid gg-grid-" + p.code};
      },
      buildings: function (p) {
        if (p.n !== undefined) {
          return {radius: Math.min(2 + Math.sqrt(p.n) * 0.8, 14), fill: true, fillColor: "#636363", fillOpacity: 0.6,
                  stroke: false, className: "gg-bin gg-building-bin"};
        }
        return {fill: true, fillColor: "#bdbdbd", fillOpacity: 0.8, color: "#636363", weight: 0.5,
                className: "gg-building"};
      },
      places: function (p) {
        return {radius: p.n !== undefined ? Math.min(3 + Math.sqrt(p.n), 14) : 4, fill: true, fillColor: "#1b9e77",
                fillOpacity: 0.85, color: "#fff", weight: 1, className: "gg-place"};
      },
      patrol_points: function (p) {
        return {radius: p.n !== undefined ? Math.min(3 + Math.sqrt(p.n), 14) : (p.kind === "duty_post" ? 6 : 4),
                fill: true, fillColor: p.kind === "duty_post" ? "#6a3d9a" : "#1f78b4", fillOpacity: 0.9,
                color: "#fff", weight: 1, className: "gg-patrol"};
      },
      patrol_routes: function () {
        return {weight: 3, color: "#1f78b4", opacity: 0.8, dashArray: "4 3", className: "gg-route"};
      },
      incidents: function (p) {
        if (p.n !== undefined) {          // a bin: size by count, colour by its commonest (open) state
          var s = dominantState(p);
          // bins are 16 px apart on the 512 px tiles: at most 7.5 px, so they never cover the grids
          return {radius: Math.min(2.5 + Math.sqrt(p.n) * 0.5, 7.5), fill: true, fillColor: cfg.states[s][1],
                  fillOpacity: 0.7, color: "#fff", weight: 0.5, className: "gg-bin gg-incident-bin gg-state-" + s};
        }
        var done = p.state === "closed" || p.state === "evaluated";
        return {radius: done ? 3.5 : 6, fill: true, fillColor: cfg.states[p.state][1], fillOpacity: done ? 0.55 : 0.95,
                color: p.overdue ? "#000" : "#fff", weight: p.overdue ? 2 : 1,
                className: "gg-incident gg-state-" + p.state + " gg-cat-" + p.category + " gg-inc-" + p.code};
      }
    };

    function tileUrl(l) {
      var params = {};
      if (l.filtered) { Object.keys(state.filters).forEach(function (k) { params[k] = state.filters[k]; }); }
      // the grid layer computes received/resolved (a pass over every incident) only for the rate
      if (l.name === "grids") { params.figures = state.measure === "resolution_rate" ? "all" : "open"; }
      if (state.versions[l.name]) { params.v = state.versions[l.name]; }
      return l.url + qs(params);
    }

    // 512 px tiles: a quarter of the requests of 256 px ones; the tile of map zoom z is the
    // server's tile of zoom z - 1 (drawn at twice the size, 8 MVT units a pixel)
    var Tiles512 = L.VectorGrid.Protobuf.extend({
      _getVectorTilePromise: function (c) {
        return L.VectorGrid.Protobuf.prototype._getVectorTilePromise.call(this, {x: c.x, y: c.y, z: c.z - 1});
      }
    });
    if (cfg.bounds) { map.fitBounds(cfg.bounds, {animate: false}); }
    var overlays = {};
    cfg.layers.forEach(function (l, i) {
      var vts = {};
      vts[l.name] = styles[l.name];
      var layer = new Tiles512(tileUrl(l), {
        tileSize: 512, minZoom: 1,
        rendererFactory: L.svg.tile, interactive: true, vectorTileLayerStyles: vts, maxZoom: 22,
        getFeatureId: function (f) { return f.properties.code; }, zIndex: 10 + i
      });
      layer.on("click", function (e) { onClick(l.name, e); });
      // every tile of the view drawn: marked on <body> for the tests and bench/page.py
      layer.on("load", function () { document.body.setAttribute("data-gg-drawn-" + l.name, "1"); });
      layer.on("loading", function () { document.body.removeAttribute("data-gg-drawn-" + l.name); });
      layers[l.name] = layer;
      overlays[l.label] = layer;
      if (l.show) { layer.addTo(map); }
    });
    // patrol overlays (GeoJSON from the patrol API, fetched the first time they are switched on)
    (cfg.overlays || []).forEach(function (o) {
      var layer = L.geoJSON(null, {
        style: function () { return o.style; },
        pointToLayer: function (f, latlng) {
          return L.circleMarker(latlng, {radius: 5, color: o.style.color, fill: true, fillOpacity: 1});
        },
        onEachFeature: function (f, lyr) {
          var p = f.properties || {};
          var tip = [p.name, p.code, p.point, p.at].filter(function (v) { return v; }).join(" · ");
          if (tip) { lyr.bindTooltip(tip); }
        }
      });
      var fetched = false;
      layer.on("add", function () {
        if (fetched) { return; }
        fetched = true;
        fetch(o.url, {credentials: "same-origin"}).then(function (r) { return r.json(); }).then(function (fc) {
          layer.addData(fc);
          document.body.setAttribute("data-gg-drawn-" + o.name, "1");
        });
      });
      layers[o.name] = layer;
      overlays[o.label] = layer;
      if (o.show) { layer.addTo(map); }
    });
    L.control.layers(null, overlays, {collapsed: false, position: "topright"}).addTo(map);

    // -- click → panel --------------------------------------------------------------------------
    function onClick(name, e) {
      var p = e.layer.properties;
      L.DomEvent.stop(e);
      if (name === "grids" || (name === "admin_areas" && p.level !== "district")) {
        select(p.code);
      } else if (name === "incidents" && p.n !== undefined) {
        map.setView(e.latlng, Math.max(map.getZoom() + 2, byName.incidents.points_from + 1));
      } else if (p.code) {
        var text = p.code + (p.name ? " " + p.name : "") + (p.state ? " · " + cfg.states[p.state][0] : "");
        L.popup().setLatLng(e.latlng).setContent(el("span", {text: text})).openOn(map);
      }
    }

    function filterQuery(extra) {
      var params = {};
      Object.keys(state.filters).forEach(function (k) { params[k] = state.filters[k]; });
      Object.keys(extra || {}).forEach(function (k) { params[k] = extra[k]; });
      return qs(params);
    }

    var panel = document.getElementById("gg-panel");

    function row(label, value) {
      return el("div", {"class": "gg-row"}, [el("span", {text: label}), el("b", {text: String(value)})]);
    }

    function select(code) {
      state.selected = code;
      getJSON(cfg.summary.replace("{code}", encodeURIComponent(code)) + filterQuery()).then(renderPanel)
        .catch(function () { state.selected = null; panel.hidden = true; });
      refreshKpi();
    }

    function renderPanel(a) {
      panel.textContent = "";
      var close = el("button", {"class": "gg-close", type: "button", text: "×", title: L_.close});
      close.addEventListener("click", function () { state.selected = null; panel.hidden = true; refreshKpi(); });
      panel.appendChild(close);
      panel.appendChild(el("h2", {id: "gg-panel-title", text: a.name}));
      panel.appendChild(el("p", {"class": "gg-sub", text: L_["level_" + a.level] + " · " + a.code}));
      var figs = el("div", {"class": "gg-figs", id: "gg-panel-figures"}, [
        row(L_.households, a.households), row(L_.buildings, a.buildings), row(L_.residents, a.residents),
        a.grids !== undefined ? row(L_.grids_in_area, a.grids) : null,
        row(L_.received, a.received), row(L_.open, a.open), row(L_.overdue, a.overdue),
        row(L_.resolution_rate, pct(a.resolution_rate)), row(L_.satisfaction_rate, pct(a.satisfaction_rate))
      ]);
      panel.appendChild(figs);
      if (a.level === "grid") {
        panel.appendChild(el("h3", {text: L_.team}));
        var team = el("ul", {id: "gg-team"});
        if (!a.team.length) { team.appendChild(el("li", {text: L_.no_team})); }
        a.team.forEach(function (m) {
          team.appendChild(el("li", {}, [el("b", {text: m.name}), el("span", {text: " " + m.role_label + " "}),
                                          el("a", {href: "tel:" + (m.phone || ""), text: m.phone || ""})]));
        });
        panel.appendChild(team);
      }
      [["by_state", "name"], ["by_category", "name"]].forEach(function (k) {
        panel.appendChild(el("h3", {text: L_[k[0]]}));
        var list = el("ul", {"class": "gg-bars", id: "gg-" + k[0]});
        var max = Math.max.apply(null, a[k[0]].map(function (r) { return r.n; }).concat([1]));
        a[k[0]].forEach(function (r) {
          var bar = el("i", {});
          bar.style.width = Math.round(100 * r.n / max) + "px";
          if (r.state) { bar.style.background = cfg.states[r.state][1]; }
          list.appendChild(el("li", {}, [el("span", {text: r[k[1]]}), bar, el("b", {text: String(r.n)})]));
        });
        panel.appendChild(list);
      });
      panel.appendChild(el("h3", {text: L_.recent}));
      var recent = el("ul", {id: "gg-recent"});
      a.recent.forEach(function (r) {
        var li = el("li", {}, [el("a", {href: "#", text: r.code}),
                              el("span", {text: " " + r.category_name + " · " + r.state_name + " · " +
                                                r.reported_at.slice(0, 10)})]);
        li.firstChild.addEventListener("click", function (ev) { ev.preventDefault(); map.setView([r.lat, r.lon], 18); });
        recent.appendChild(li);
      });
      panel.appendChild(recent);
      panel.hidden = false;
    }

    // -- KPI strip -----------------------------------------------------------------------------
    var kpiTimer = null;
    function refreshKpi() {
      clearTimeout(kpiTimer);
      kpiTimer = setTimeout(function () {
        var extra = {};
        if (state.selected) { extra.area = state.selected; } else {
          var b = map.getBounds();
          extra.bbox = [Math.max(b.getWest(), -180), Math.max(b.getSouth(), -90), Math.min(b.getEast(), 180),
                        Math.min(b.getNorth(), 90)].map(function (v) { return v.toFixed(6); }).join(",");
        }
        getJSON(cfg.kpi + filterQuery(extra)).then(function (k) {
          document.getElementById("gg-kpi-scope").textContent = state.selected ? L_.kpi_selected : L_.kpi_view;
          document.getElementById("gg-kpi-new_today").textContent = k.new_today;
          document.getElementById("gg-kpi-open").textContent = k.open;
          document.getElementById("gg-kpi-overdue").textContent = k.overdue;
          document.getElementById("gg-kpi-resolution").textContent = pct(k.resolution_rate);
          document.getElementById("gg-kpi-satisfaction").textContent = pct(k.satisfaction_rate);
        }).catch(function () { /* the next move or poll retries */ });
      }, 250);
    }
    map.on("moveend", function () { if (!state.selected) { refreshKpi(); } });

    // -- legend and measure --------------------------------------------------------------------
    function renderLegend() {
      var m = cfg.measures[state.measure], box = document.getElementById("gg-legend");
      box.textContent = "";
      box.appendChild(el("b", {text: m.label}));
      m.classes.forEach(function (c, i) {
        var next = m.classes[i + 1];
        var fmt = function (v) { return state.measure === "resolution_rate" ? Math.round(v * 100) + "%" : String(v); };
        var sw = el("i", {});
        sw.style.background = c[1];
        box.appendChild(el("div", {}, [sw, el("span", {text: fmt(c[0]) + (next ? "–" + fmt(next[0]) : "+")})]));
      });
      var none = el("i", {});
      none.style.background = "#dddddd";
      box.appendChild(el("div", {}, [none, el("span", {text: L_.legend_none})]));
      var states = el("div", {"class": "gg-legend-states"});
      Object.keys(cfg.states).forEach(function (s) {
        var dot = el("i", {"class": "gg-dot-legend"});
        dot.style.background = cfg.states[s][1];
        states.appendChild(el("span", {}, [dot, el("span", {text: cfg.states[s][0]})]));
      });
      box.appendChild(states);
    }

    var measure = document.getElementById("gg-measure");
    Object.keys(cfg.measures).forEach(function (k) {
      measure.appendChild(el("option", {value: k, text: cfg.measures[k].label}));
    });
    measure.addEventListener("change", function () {
      state.measure = measure.value;
      renderLegend();
      layers.grids.setUrl(tileUrl(byName.grids));
    });
    renderLegend();

    // -- filters -------------------------------------------------------------------------------
    var category = document.getElementById("gg-category"), st = document.getElementById("gg-state");
    cfg.categories.forEach(function (c) { category.appendChild(el("option", {value: c[0], text: c[1]})); });
    Object.keys(cfg.states).forEach(function (s) { st.appendChild(el("option", {value: s, text: cfg.states[s][0]})); });
    function applyFilters() {
      var since = document.getElementById("gg-since").value, until = document.getElementById("gg-until").value;
      state.filters = {since: since, until: until, category: category.value, state: st.value};
      Object.keys(state.filters).forEach(function (k) { if (!state.filters[k]) { delete state.filters[k]; } });
      cfg.layers.forEach(function (l) { if (l.filtered) { layers[l.name].setUrl(tileUrl(l)); } });
      if (state.selected) { select(state.selected); } else { refreshKpi(); }
    }
    ["gg-since", "gg-until", "gg-category", "gg-state"].forEach(function (id) {
      document.getElementById(id).addEventListener("change", applyFilters);
    });

    // -- search --------------------------------------------------------------------------------
    var results = document.getElementById("gg-search-results");
    document.getElementById("gg-search-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      var q = document.getElementById("gg-search").value.trim();
      results.textContent = "";
      if (!q) { return; }
      getJSON(cfg.search + qs({q: q})).then(function (found) {
        if (!found.length) { results.appendChild(el("li", {text: L_.no_results})); }
        found.forEach(function (f) {
          var a = el("a", {href: "#", "data-code": f.code, text: f.label + " (" + f.code + ")"});
          a.addEventListener("click", function (e2) {
            e2.preventDefault();
            results.textContent = "";
            stack();
            if (f.lat !== null) { map.setView([f.lat, f.lon], f.zoom); }
            if (["grid", "community", "street", "district"].indexOf(f.kind) >= 0) { select(f.code); }
          });
          results.appendChild(el("li", {"class": "gg-kind-" + f.kind}, [a]));
        });
        stack();
      });
    });

    // -- live: poll the data versions; a change redraws the layers that read the changed data --
    var latest = document.getElementById("gg-latest-list");
    function refreshLatest() {
      getJSON(cfg.latest).then(function (page) {
        latest.textContent = "";
        page.items.forEach(function (i) {
          var a = el("a", {href: "#", text: i.code});
          a.addEventListener("click", function (e) { e.preventDefault(); map.setView([i.lat, i.lon], 18); });
          latest.appendChild(el("li", {"class": "gg-state-" + i.state}, [
            a, el("span", {text: " " + (categoryNames[i.category] || i.category) + " · " + cfg.states[i.state][0]})]));
        });
      }).catch(function () { /* retried at the next change */ });
    }
    function poll() {
      getJSON(cfg.index).then(function (index) {
        var changed = false;
        cfg.layers.forEach(function (l) {
          var v = index[l.name] && index[l.name].data_version;
          if (v && state.versions[l.name] !== v) {
            var first = state.versions[l.name] === undefined;
            state.versions[l.name] = v;
            if (!first) { layers[l.name].setUrl(tileUrl(l)); changed = true; }
          }
        });
        if (changed) {
          refreshLatest();
          if (state.selected) { select(state.selected); } else { refreshKpi(); }
        }
      }).catch(function () { /* offline for a moment: the next poll retries */ });
    }
    // the left column: title bar, then tools, then the panel, each below the one before
    function stack() {
      var bar = document.getElementById("gg-title"), tools = document.getElementById("gg-tools");
      tools.style.top = (bar.offsetTop + bar.offsetHeight + 6) + "px";
      panel.style.top = (tools.offsetTop + tools.offsetHeight + 6) + "px";
    }
    stack();
    window.addEventListener("resize", stack);
    poll();
    setInterval(poll, cfg.poll_ms);
    refreshLatest();
    // the figures after the first drawing of the grids: the map first, then the strip
    var kpiStarted = false;
    function firstKpi() { if (!kpiStarted) { kpiStarted = true; refreshKpi(); } }
    layers.grids.once("load", firstKpi);
    setTimeout(firstKpi, 3000);
    gisgrid.map = map;
    gisgrid.state = state;
    gisgrid.layers = layers;
  };
}());
