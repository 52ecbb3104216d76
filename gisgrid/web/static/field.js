// gisgrid field page: report incidents and check in at patrol points from a phone, also
// without network. Every report and every check-in gets an idempotency key when it is made; it
// waits in the one IndexedDB outbox until the server has answered, and every resend carries the
// same key, so nothing is lost and nothing is filed twice.
(function () {
  "use strict";
  var cfg = JSON.parse(document.getElementById("field-config").textContent);
  var T = cfg.labels;
  var csrf = document.querySelector('meta[name="csrf-token"]').content;
  var $ = function (s) { return document.querySelector(s); };
  var esc = function (s) { var d = document.createElement("div"); d.textContent = s == null ? "" : String(s); return d.innerHTML; };

  // -- IndexedDB outbox -------------------------------------------------------------------
  var dbp = new Promise(function (resolve, reject) {
    var req = indexedDB.open("gisgrid-field", 1);
    req.onupgradeneeded = function () { req.result.createObjectStore("outbox", { keyPath: "key" }); };
    req.onsuccess = function () { resolve(req.result); };
    req.onerror = function () { reject(req.error); };
  });
  function store(mode, fn) {
    return dbp.then(function (db) {
      return new Promise(function (resolve, reject) {
        var tx = db.transaction("outbox", mode), r = fn(tx.objectStore("outbox"));
        tx.oncomplete = function () { resolve(r && r.result); };
        tx.onerror = function () { reject(tx.error); };
      });
    });
  }
  var outbox = {
    put: function (item) { return store("readwrite", function (s) { return s.put(item); }); },
    del: function (key) { return store("readwrite", function (s) { return s.delete(key); }); },
    all: function () { return store("readonly", function (s) { return s.getAll(); }); }
  };

  // -- network ----------------------------------------------------------------------------
  function api(method, url, body, headers) {
    var h = Object.assign({ "X-CSRFToken": csrf, "Accept": "application/json" }, headers || {});
    var opts = { method: method, headers: h, credentials: "same-origin" };
    if (body instanceof FormData) { opts.body = body; }
    else if (body !== undefined) { h["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
    return fetch(url, opts).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (j) { return { status: r.status, body: j }; });
    });
  }
  function showNet() {
    var on = navigator.onLine; var n = $("#net");
    n.textContent = on ? T.online : T.offline; n.className = on ? "net" : "net off";
  }

  var sending = false;
  function flush() {
    if (sending) { return Promise.resolve(); }
    sending = true;
    return outbox.all().then(function (items) {
      return items.reduce(function (p, item) { return p.then(function () { return send(item); }); }, Promise.resolve());
    }).catch(function () { /* network still down: keep everything */ })
      .then(function () { sending = false; return updateOutbox(); });
  }
  // an outbox item: {key, made, url, body, photo?}; items queued before check-ins existed
  // carry their report as item.report and go to /api/incidents
  function send(item) {
    var url = item.url || "/api/incidents", body = item.body || item.report;
    return api("POST", url, body, { "Idempotency-Key": item.key }).then(function (r) {
      if (r.status === 200 || r.status === 201) {
        var next = item.photo ? uploadPhoto(r.body.code, item.photo) : Promise.resolve();
        return next.then(function () { return outbox.del(item.key); })
          .then(function () { (url === CHECKINS ? showCheckin : showResult)(r.body); });
      }
      if (r.status >= 400 && r.status < 500 && r.status !== 408 && r.status !== 429) {
        // refused for good (bad input, no permission): say why, do not retry for ever
        return outbox.del(item.key).then(function () {
          $("#result").innerHTML = '<p class="error">' + esc(T.refused) + ": " + esc(r.body.message) + "</p>";
        });
      }
      throw new Error("retry later");
    });
  }
  function uploadPhoto(code, blob) {
    var fd = new FormData(); fd.append("photo", blob, "photo.jpg");
    return api("POST", "/api/incidents/" + encodeURIComponent(code) + "/photos", fd);
  }
  function enqueue(item) {
    return outbox.put(item).then(function () {
      $("#result").innerHTML = "<p>" + esc(navigator.onLine ? T.sending : T.saved_offline) + "</p>";
      return flush();
    }).then(function () {
      return outbox.all().then(function (items) {
        if (items.some(function (i) { return i.key === item.key; })) {
          $("#result").innerHTML = "<p>" + esc(T.saved_offline) + "</p>";
        }
      });
    });
  }
  function newKey() { return crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random(); }
  function updateOutbox() {
    return outbox.all().then(function (items) {
      $("#outbox").textContent = items.length ? T.waiting.replace("{n}", items.length) : "";
    });
  }
  function showResult(inc) {
    var team = (inc.team || []).map(function (m) {
      return "<li>" + esc(m.role_label) + " " + esc(m.name) + (m.phone ? " · " + esc(m.phone) : "") + "</li>";
    }).join("");
    $("#result").innerHTML = '<p><b>' + esc(T.sent) + "</b> " + esc(inc.code) + "</p>" +
      "<p>" + esc(T.grid) + "：" + esc(inc.grid_code || T.unlinked) + "</p>" +
      (team ? "<ul>" + team + "</ul>" : "") +
      ((inc.possible_duplicates || []).length ? "<p>" + esc(T.duplicates) + "：" +
        inc.possible_duplicates.map(function (d) { return esc(d.code) + "（" + d.metres + "m）"; }).join("，") + "</p>" : "");
  }

  // -- map and position -----------------------------------------------------------------
  var map = L.map("map", { zoomControl: true }).setView(cfg.centre, 16);
  if (cfg.basemap) { L.tileLayer(cfg.basemap, { maxZoom: 19 }).addTo(map); }
  var pin = null, accuracy = null;
  function place(lat, lon, acc) {
    accuracy = acc;
    if (!pin) {
      pin = L.marker([lat, lon], { draggable: true }).addTo(map);
      pin.on("dragend", function () { accuracy = null; showWhere(); });
    } else { pin.setLatLng([lat, lon]); }
    map.setView([lat, lon], 17);
    showWhere();
  }
  function showWhere() {
    var p = pin.getLatLng();
    $("#where").textContent = p.lat.toFixed(6) + ", " + p.lng.toFixed(6) + (accuracy ? " ±" + Math.round(accuracy) + "m" : " " + T.dragged);
  }
  api("GET", "/api/grids?limit=200").then(function (r) {
    if (r.status === 200) {
      var layer = L.geoJSON(r.body, { style: { color: "#2171b5", weight: 1.5, fillOpacity: 0.08 } }).addTo(map);
      if (!pin && r.body.features.length) { map.fitBounds(layer.getBounds()); }
    }
  }).catch(function () {});
  if (navigator.geolocation) {
    navigator.geolocation.getCurrentPosition(function (pos) {
      place(pos.coords.latitude, pos.coords.longitude, pos.coords.accuracy);
    }, function () { var c = map.getCenter(); place(c.lat, c.lng, null); $("#where").textContent = T.no_position; },
    { enableHighAccuracy: true, timeout: 10000 });
  }
  map.on("click", function (e) { place(e.latlng.lat, e.latlng.lng, null); });

  // -- categories (kept for offline use) ----------------------------------------------------
  function fillCategories(list) {
    $("select[name=category]").innerHTML = list.map(function (c) {
      return '<option value="' + esc(c.code) + '">' + esc(c.name) + "</option>";
    }).join("");
  }
  api("GET", "/api/categories").then(function (r) {
    if (r.status === 200) { localStorage.setItem("gisgrid-categories", JSON.stringify(r.body)); fillCategories(r.body); }
  }).catch(function () { fillCategories(JSON.parse(localStorage.getItem("gisgrid-categories") || "[]")); });

  // -- report -------------------------------------------------------------------------------
  $("#report").addEventListener("submit", function (e) {
    e.preventDefault();
    if (!pin) { $("#result").textContent = T.no_position; return; }
    var f = e.target, p = pin.getLatLng();
    var item = {
      key: newKey(), made: new Date().toISOString(), url: "/api/incidents",
      body: { category: f.category.value, description: f.description.value, lon: p.lng, lat: p.lat,
              source: "patrol" },
      photo: f.photo.files[0] || null
    };
    if (accuracy) { item.body.accuracy_m = accuracy; }
    f.description.value = ""; f.photo.value = "";
    enqueue(item);
  });

  // -- patrol: check in at a point with the GPS fix (never the dragged pin) ------------------
  var CHECKINS = "/api/patrol/checkins", gps = null, points = [];
  function metres(lat1, lon1, lat2, lon2) {
    var r = Math.PI / 180, a = Math.sin((lat2 - lat1) * r / 2), b = Math.sin((lon2 - lon1) * r / 2);
    return 2 * 6371008.8 * Math.asin(Math.sqrt(a * a + Math.cos(lat1 * r) * Math.cos(lat2 * r) * b * b));
  }
  function showPoints() {
    $("#gps").textContent = gps ? gps.lat.toFixed(6) + ", " + gps.lon.toFixed(6) + " ±" + Math.round(gps.acc) + "m"
      : T.no_gps;
    var list = points.map(function (f) {
      var c = f.geometry.coordinates;
      return { p: f.properties, d: gps ? metres(gps.lat, gps.lon, c[1], c[0]) : null };
    }).sort(function (a, b) { return (a.d === null ? 0 : a.d) - (b.d === null ? 0 : b.d); }).slice(0, 30);
    $("#points").innerHTML = list.map(function (x) {
      return '<li data-code="' + esc(x.p.code) + '"><span><b>' + esc(x.p.name) + "</b> " + esc(x.p.code) + "<br>" +
        (x.d === null ? "" : esc(T.distance) + " " + Math.round(x.d) + "m · ") + esc(T.radius) + " " +
        Math.round(x.p.radius_m) + "m</span><button>" + esc(T.checkin) + "</button></li>";
    }).join("") || "<li>" + esc(T.points_empty) + "</li>";
  }
  function showCheckin(c) {
    $("#result").innerHTML = "<p><b class=\"" + (c.accepted ? "ok" : "error") + "\">" +
      esc(c.accepted ? T.checkin_ok : T.checkin_rejected) + "</b> " + esc(c.point_name) + " " + esc(c.point) + "</p>" +
      "<p>" + esc(T.distance) + " " + Math.round(c.distance_m) + "m · " + esc(T.allowed) + " " + Math.round(c.allowed_m) +
      "m</p>";
  }
  api("GET", "/api/patrol/points?limit=10000").then(function (r) {
    if (r.status === 200) {
      points = r.body.features;
      try { localStorage.setItem("gisgrid-patrol-points", JSON.stringify(points)); } catch (e) { /* full */ }
      showPoints();
    }
  }).catch(function () { points = JSON.parse(localStorage.getItem("gisgrid-patrol-points") || "[]"); showPoints(); });
  if (navigator.geolocation) {
    navigator.geolocation.watchPosition(function (pos) {
      gps = { lat: pos.coords.latitude, lon: pos.coords.longitude, acc: pos.coords.accuracy };
      showPoints();
    }, function () { showPoints(); }, { enableHighAccuracy: true, maximumAge: 10000 });
  }
  $("#points").addEventListener("click", function (e) {
    if (e.target.tagName !== "BUTTON") { return; }
    if (!gps) { $("#result").textContent = T.no_gps; return; }
    enqueue({ key: newKey(), made: new Date().toISOString(), url: CHECKINS,
              body: { point: e.target.closest("li").getAttribute("data-code"), lon: gps.lon, lat: gps.lat,
                      accuracy_m: gps.acc, at: new Date().toISOString() } });
  });

  // -- my queue -----------------------------------------------------------------------------
  function loadQueue() {
    api("GET", "/api/incidents?state=dispatched,handling,feedback&limit=50").then(function (r) {
      if (r.status !== 200) { return; }
      $("#queue").innerHTML = r.body.items.map(function (i) {
        var acts = ["start", "feedback"].filter(function (a) {
          return (a === "start" && i.state === "dispatched") || (a === "feedback" && i.state === "handling");
        });
        return '<li data-code="' + esc(i.code) + '"><b>' + esc(i.code) + "</b> " + esc(i.category_name || i.category) +
          " · " + esc(i.state) + (i.overdue ? ' · <b class="error">' + esc(T.overdue) + "</b>" : "") +
          "<br>" + esc(i.description) + "<br>" +
          acts.map(function (a) { return '<button data-act="' + a + '">' + esc(T["act_" + a]) + "</button>"; }).join("") + "</li>";
      }).join("") || "<li>" + esc(T.queue_empty) + "</li>";
    }).catch(function () {});
  }
  $("#queue").addEventListener("click", function (e) {
    var act = e.target.getAttribute("data-act"); if (!act) { return; }
    var code = e.target.closest("li").getAttribute("data-code");
    var note = act === "feedback" ? window.prompt(T.feedback_note) : null;
    if (act === "feedback" && !note) { return; }
    api("POST", "/api/incidents/" + encodeURIComponent(code) + "/actions/" + act, note ? { note: note } : {})
      .then(function () { loadQueue(); });
  });
  document.querySelectorAll("nav button").forEach(function (b) {
    b.addEventListener("click", function () {
      document.querySelectorAll("nav button").forEach(function (x) { x.classList.toggle("on", x === b); });
      ["report", "queue", "patrol"].forEach(function (t) { $("#tab-" + t).hidden = b.dataset.tab !== t; });
      if (b.dataset.tab === "queue") { loadQueue(); }
    });
  });

  window.addEventListener("online", function () { showNet(); flush(); });
  window.addEventListener("offline", showNet);
  setInterval(function () { if (navigator.onLine) { flush(); } }, 5000);
  showNet(); updateOutbox(); flush();
})();
