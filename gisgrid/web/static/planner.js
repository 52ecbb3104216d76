// gisgrid planner page: open or start a plan, edit its cells (Leaflet-Geoman), see each cell's
// households and deviation and the checks after every edit, propose, diff, publish.
(function () {
  "use strict";
  var cfg = JSON.parse(document.getElementById("planner-config").textContent);
  var T = cfg.labels;
  var csrf = document.querySelector('meta[name="csrf-token"]').content;
  var $ = function (s) { return document.querySelector(s); };
  var esc = function (s) { var d = document.createElement("div"); d.textContent = s == null ? "" : String(s); return d.innerHTML; };
  var CHECKS = ["gap", "overlap", "invalid_edge", "outside", "fragmented", "empty", "sliver", "households",
                "compactness", "road_crossing"];

  function api(method, url, body) {
    var opts = { method: method, credentials: "same-origin",
                 headers: { "X-CSRFToken": csrf, "Accept": "application/json" } };
    if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
    return fetch(url, opts).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (j) {
        if (r.status >= 400) { throw new Error((j && j.message) || ("HTTP " + r.status)); }
        return j;
      });
    });
  }
  function fail(e) { $("#message").textContent = e.message; }
  function say(text) { $("#message").textContent = text || ""; }

  // -- map --------------------------------------------------------------------------------
  var map = L.map("map", { zoomControl: true, maxZoom: 20 }).setView([30.6, 114.27], 14);
  if (cfg.basemap) { L.tileLayer(cfg.basemap, { maxZoom: 20 }).addTo(map); }
  map.pm.setGlobalOptions({ allowSelfIntersection: false, snappable: true, snapDistance: 15 });
  var cellLayer = L.featureGroup().addTo(map);
  var problemLayer = L.featureGroup().addTo(map);
  var diffLayer = L.featureGroup().addTo(map);

  var state = { plan: null, cells: [], stats: {}, selected: [], editing: null };

  function colour(dev) {
    if (dev === undefined) { return "#999"; }
    var a = Math.abs(dev), tol = state.plan ? state.plan.tolerance : 0.1;
    return a <= tol ? "#31a354" : (dev > 0 ? "#de2d26" : "#3182bd");
  }
  function versions() {
    var v = {};
    state.cells.forEach(function (f) { v[f.properties.code] = f.properties.version; });
    return v;
  }
  function drawCells(fit) {
    cellLayer.clearLayers();
    state.editing = null;
    state.cells.forEach(function (f) {
      var code = f.properties.code, st = state.stats[code] || {};
      var layer = L.geoJSON(f, { style: { color: "#333", weight: state.selected.indexOf(code) >= 0 ? 4 : 1.5,
                                           fillColor: colour(st.deviation), fillOpacity: 0.35 } }).getLayers()[0];
      layer.feature = f;
      layer.bindTooltip(esc(code.slice(-3)) + " · " + (st.households != null ? st.households : "?") + " " +
                        esc(T.households), { sticky: true });
      layer.on("click", function (ev) { select(code, ev.originalEvent && ev.originalEvent.shiftKey); });
      layer.on("pm:edit", function () { sendShape(code, layer); });
      cellLayer.addLayer(layer);
      if (state.selected.length === 1 && state.selected[0] === code && state.plan.state === "draft") {
        layer.pm.enable({ allowSelfIntersection: false });
        state.editing = layer;
      }
    });
    if (fit && cellLayer.getLayers().length) { map.fitBounds(cellLayer.getBounds()); }
    drawTable();
  }
  function drawTable() {
    var rows = state.cells.map(function (f) {
      var c = f.properties.code, st = state.stats[c] || {};
      var cls = (st.within_tolerance === false ? "out " : "") + (state.selected.indexOf(c) >= 0 ? "sel" : "");
      return '<tr class="' + cls + '" data-code="' + esc(c) + '"><td>' + esc(c) + "</td><td>" +
        esc(st.households) + "</td><td>" + (st.deviation == null ? "" : esc((st.deviation * 100).toFixed(1) + "%")) + "</td></tr>";
    });
    $("#cells tbody").innerHTML = rows.join("");
  }
  function select(code, add) {
    var i = state.selected.indexOf(code);
    if (add) { if (i >= 0) { state.selected.splice(i, 1); } else { state.selected.push(code); } }
    else { state.selected = i >= 0 && state.selected.length === 1 ? [] : [code]; }
    drawCells(false);
  }
  function showCheck(rep) {
    state.stats = {};
    rep.cells.forEach(function (c) { state.stats[c.code] = c; });
    var s = $("#check-summary");
    s.textContent = rep.ok && !rep.warnings ? T.checks_ok :
      T.checks_bad.replace("{errors}", rep.errors).replace("{warnings}", rep.warnings);
    s.className = rep.ok ? "ok" : "bad";
    s.dataset.errors = rep.errors;
    $("#check-counts").innerHTML = CHECKS.filter(function (k) { return rep.counts[k]; }).map(function (k) {
      return '<li data-check="' + k + '">' + esc(T[k] || k) + ": " + rep.counts[k] + "</li>";
    }).join("");
    problemLayer.clearLayers();
    L.geoJSON(rep.features, {
      filter: function (f) { return f.geometry && f.properties.check !== "households" && f.properties.check !== "compactness"; },
      style: function (f) { return { color: f.properties.severity === "error" ? "#d7301f" : "#fe9929", weight: 3,
                                      fillOpacity: 0.5, dashArray: f.properties.severity === "error" ? null : "4 3" }; },
      onEachFeature: function (f, l) { l.bindTooltip(esc(f.properties.message)); }
    }).eachLayer(function (l) { problemLayer.addLayer(l); });
    drawCells(false);
  }
  function applied(out) {
    state.cells = out.cells;
    state.plan.seq = out.seq;
    state.selected = state.selected.filter(function (c) { return out.cells.some(function (f) { return f.properties.code === c; }); });
    showCheck(out.check);
    say("");
  }

  // -- edits ------------------------------------------------------------------------------
  function sendShape(code, layer) {
    var body = { op: $("#edit-mode").value, code: code, geometry: layer.toGeoJSON().geometry, versions: versions() };
    api("POST", "/api/plans/" + state.plan.id + "/edits", body).then(applied).catch(function (e) { fail(e); reload(); });
  }
  $("#merge").addEventListener("click", function () {
    if (state.selected.length < 2) { return say(T.select_two); }
    api("POST", "/api/plans/" + state.plan.id + "/edits", { op: "merge", codes: state.selected, versions: versions() })
      .then(applied).catch(fail);
  });
  $("#split").addEventListener("click", function () {
    if (state.selected.length !== 1) { return say(T.select_one); }
    say(T.draw_split);
    map.pm.enableDraw("Line", { finishOn: "dblclick" });
  });
  map.on("pm:create", function (ev) {
    var line = ev.layer.toGeoJSON().geometry;
    map.removeLayer(ev.layer);
    api("POST", "/api/plans/" + state.plan.id + "/edits", { op: "split", code: state.selected[0], line: line,
                                                             versions: versions() }).then(applied).catch(fail);
  });
  $("#undo").addEventListener("click", function () {
    api("POST", "/api/plans/" + state.plan.id + "/undo").then(applied).catch(fail);
  });
  $("#propose").addEventListener("click", function () {
    var body = { keep_current: $("#keep-current").checked };
    if ($("#target").value) { body.target = parseInt($("#target").value, 10); }
    if ($("#tolerance").value) { body.tolerance = parseFloat($("#tolerance").value); }
    $("#propose").disabled = true;
    api("POST", "/api/plans/" + state.plan.id + "/propose", body).then(function (out) {
      state.selected = [];
      applied(out);
      var p = out.proposal;
      $("#proposal").innerHTML = esc(p.parts + " " + T.cell + " · " + T.moved + " " + p.households_moved) + "<br>" +
        esc(T.exceptions) + ": " + p.exceptions.map(function (e) {
          return esc(e.code + " " + e.households + " (" + e.reason + ")");
        }).join("; ");
    }).catch(fail).then(function () { $("#propose").disabled = false; });
  });

  // -- plan life --------------------------------------------------------------------------
  function act(action) {
    return function () {
      api("POST", "/api/plans/" + state.plan.id + "/actions/" + action).then(function () { return open(state.plan.id); })
        .catch(fail);
    };
  }
  ["submit", "reopen", "publish", "rollback", "discard"].forEach(function (a) {
    $("#" + a + (a === "submit" || a === "reopen" ? "-plan" : "")).addEventListener("click", act(a));
  });
  $("#diff").addEventListener("click", function () {
    api("GET", "/api/plans/" + state.plan.id + "/diff").then(function (d) {
      var lines = Object.keys(d.layers).map(function (k) { return k + ": " + d.layers[k].count; });
      lines.push("staff kept " + d.staff_assignments.kept + ", ended " + d.staff_assignments.ended);
      lines.push("grids " + d.grids.current + " → " + d.grids.planned);
      $("#diff-out").textContent = lines.join("\n");
      diffLayer.clearLayers();
      L.geoJSON(d.changed_areas, { style: { color: "#6a51a3", weight: 1, fillOpacity: 0.4 } })
        .eachLayer(function (l) { diffLayer.addLayer(l); });
    }).catch(fail);
  });
  $("#new-plan").addEventListener("click", function () {
    var body = { scope: $("#scope").value };
    if ($("#target").value) { body.target = parseInt($("#target").value, 10); }
    api("POST", "/api/plans", body).then(function (p) { return listPlans().then(function () { return open(p.id); }); })
      .catch(fail);
  });
  $("#plan-select").addEventListener("change", function () { open(parseInt($("#plan-select").value, 10)); });

  function buttons() {
    var s = state.plan ? state.plan.allowed : [];
    var draft = state.plan && state.plan.state === "draft";
    ["propose", "undo", "merge", "split"].forEach(function (id) { $("#" + id).disabled = !draft; });
    $("#submit-plan").disabled = s.indexOf("submit") < 0;
    $("#reopen-plan").disabled = s.indexOf("reopen") < 0;
    $("#publish").disabled = s.indexOf("publish") < 0;
    $("#rollback").disabled = s.indexOf("rollback") < 0;
    $("#discard").disabled = s.indexOf("discard") < 0;
  }
  function open(id) {
    return api("GET", "/api/plans/" + id).then(function (p) {
      state.plan = p;
      state.cells = p.cells;
      state.selected = [];
      $("#plan-select").value = String(id);
      $("#target").value = p.target;
      $("#tolerance").value = p.tolerance;
      $("#plan-info").textContent = p.name + " · " + p.scope_code + " · " + T.state + ": " + p.state;
      document.body.dataset.plan = p.id;
      document.body.dataset.state = p.state;
      buttons();
      drawCells(true);
      return api("GET", "/api/plans/" + id + "/check").then(showCheck);
    }).catch(fail);
  }
  function reload() { return state.plan ? open(state.plan.id) : Promise.resolve(); }
  function listPlans() {
    return api("GET", "/api/plans").then(function (list) {
      $("#plan-select").innerHTML = '<option value="">—</option>' + list.map(function (p) {
        return '<option value="' + p.id + '">' + esc(p.id + " · " + p.name + " · " + p.state) + "</option>";
      }).join("");
    });
  }
  $("#scope").innerHTML = cfg.communities.map(function (c) {
    return '<option value="' + esc(c.code) + '">' + esc(c.name + " " + c.code) + "</option>";
  }).join("");
  buttons();
  listPlans().then(function () { if (cfg.plan) { return open(cfg.plan); } }).catch(fail);
})();
