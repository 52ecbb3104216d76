"""Vector tiles over HTTP: ``/tiles/<layer>/<z>/<x>/<y>.pbf``, a TileJSON per layer and an index.

The view validates, asks :mod:`gisgrid.layers.tiles` for the one statement, returns bytes. Every
request is authorised (``read``) and the jurisdiction is part of the statement, of the cache key
and of the ETag (tiles are ``Cache-Control: private``).

Caching: the ETag is derived from the layer's data version (:mod:`gisgrid.layers.changes`), the
filters and the jurisdiction, so a browser revalidates with ``If-None-Match`` and gets a 304
until the data change. A request carrying ``v=<version>`` equal to the current version may be
kept by the browser (``max-age``): the page asks with the version it polled, and a change of
data gives a new URL. Tiles are kept gzipped in an in-process LRU, each with the version it was drawn at.

Every tile request reads its layer's version or draws the tile (the version read in the same
statement) on a connection of the tile engine (``tile_connections``,
:class:`gisgrid.db.engine.PooledConnections`: autocommitted, custom plans, no JIT, the one used
last handed out first so its prepared statements are found again), as prepared statements,
without an ORM session: a cached tile or a 304 costs that one round trip, a drawn tile one
statement (two when a drawing of it is kept but at an older version). The version is read on
every request, so a tile is never older than the last write committed before it was asked for,
whichever process made it.
"""
from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict

from flask import Blueprint, Response, jsonify, request, url_for
from isal import igzip

from gisgrid.errors import InvalidInput
from gisgrid.layers import incidents
from gisgrid.layers import tiles as tl
from gisgrid.web import db, i18n
from gisgrid.web.auth import needs, principal

bp = Blueprint("tiles", __name__, url_prefix="/tiles")

MVT = "application/vnd.mapbox-vector-tile"
#: gzip by ISA-L (``isal.igzip``, the same gzip format as zlib makes, 4-5× faster on tiles): an uncached
#: tile is what a user waits for. Level 2 of ISA-L's 0-3 makes about the bytes of zlib's level 1 (±2 %)
#: in the time of its level 1 (0.7 ms for a 170 KB tile; zlib level 1: 3.3 ms)
GZIP_LEVEL = 2
FRESH_SECONDS = 86_400      # a tile asked for with the current ?v= may be kept this long


class TileCache:
    """Gzipped tiles by (layer, z, x, y, filters, jurisdiction), each with the version it was
    drawn at: one entry a tile, its newest drawing (an older version is never asked for again).
    Least recently used out first once over ``max_bytes``. Thread-safe (the server runs each
    worker's requests in threads)."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.size = max_bytes, 0
        self._items: OrderedDict[tuple, tuple[str, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key) -> tuple[str, bytes] | None:
        """``(version, gzipped tile)`` of ``key``, or None when it was never kept (or dropped)."""
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key, version: str, data: bytes) -> None:
        """Keep ``data`` as ``key``'s drawing at ``version``, in place of any earlier one."""
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.size -= len(old[1])
            self._items[key] = (version, data)
            self.size += len(data)
            while self.size > self.max_bytes and self._items:
                _, (_, dropped) = self._items.popitem(last=False)
                self.size -= len(dropped)


def _cache() -> TileCache:
    from flask import current_app

    return current_app.extensions["gisgrid"]["tile_cache"]


def _connections():
    from flask import current_app

    return current_app.extensions["gisgrid"]["tile_connections"]


def _version(name: str) -> str:
    """The layer's current version: one prepared statement on a tile connection (a read: tried
    again once on a new connection if the database went away in between)."""
    return _connections().run(lambda conn: tl.version_on(conn, name), retry=True)


def _scope_key(p) -> str:
    return "*" if p.everywhere else ",".join(sorted(p.jurisdiction))


_NO_FILTERS = tl.Filters()


def _filters(lay: tl.Layer) -> tl.Filters:
    if not request.args:        # most tiles: no query at all
        return _NO_FILTERS
    allowed = set(lay.params) | {"v"}
    unknown = sorted(set(request.args) - allowed)
    if unknown:
        raise InvalidInput(f"unknown query parameter {unknown[0]!r} for layer {lay.name!r}; allowed: "
                           f"{', '.join(sorted(allowed))}", field=unknown[0])
    if not lay.filtered:
        return tl.Filters()
    known = (c["code"] for c in incidents.categories(db())) if request.args.get("category") else ()
    return tl.parse_filters(request.args, known)


@functools.lru_cache(maxsize=1024)     # a few versions, asked for by every tile
def _short(version: str) -> str:
    return hashlib.sha1(version.encode()).hexdigest()[:16]


def _etag(name: str, version: str, filters: tl.Filters, scope: str, tile: tl.Tile) -> str:
    return hashlib.sha1(f"{name}|{tile.z}/{tile.x}/{tile.y}|{version}|{filters.key()}|{scope}".encode()).hexdigest()[:24]


@bp.get("/<name>/<int:z>/<int:x>/<int:y>.pbf")
@needs("read")
def tile(name, z, x, y):
    """One Mapbox Vector Tile of layer ``name`` for the caller's jurisdiction."""
    lay = tl.layer(name)
    t = tl.parse_tile(z, x, y)
    filters = _filters(lay)
    p = principal()
    scope = _scope_key(p)
    cache = _cache()
    key = (name, t, filters.key(), scope)
    kept = cache.get(key) if cache.max_bytes else None
    packed = None
    # the version first when it can spare the drawing: a revalidation, or a tile kept at some
    # version (one never drawn here is drawn at once: its statement reads the version too)
    if request.if_none_match or kept is not None:
        version = _version(name)
        etag = _etag(name, version, filters, scope, t)
        if etag in request.if_none_match:
            return _headers(Response(status=304), etag, version)
        if kept is not None and kept[0] == version:
            packed = kept[1]
    if packed is None:
        data, version = _connections().run(lambda conn: tl.draw(conn, name, t, p, filters),  # bytes and version,
                                           retry=True)                                       # one snapshot
        packed = igzip.compress(data, GZIP_LEVEL, mtime=0)
        if cache.max_bytes:
            cache.put(key, version, packed)
        etag = _etag(name, version, filters, scope, t)
    if "gzip" in request.accept_encodings:
        resp = Response(packed, mimetype=MVT)
        resp.headers["Content-Encoding"] = "gzip"
    else:
        resp = Response(igzip.decompress(packed), mimetype=MVT)
    return _headers(resp, etag, version)


def _headers(resp: Response, etag: str, version: str) -> Response:
    resp.set_etag(etag)
    resp.headers["Vary"] = "Accept-Encoding, Cookie, Authorization"
    resp.headers["X-Data-Version"] = _short(version)
    if request.args.get("v") == _short(version):
        resp.headers["Cache-Control"] = f"private, max-age={FRESH_SECONDS}"
    else:
        resp.headers["Cache-Control"] = "private, no-cache"
    return resp


@bp.get("/<name>.json")
@needs("read")
def tilejson(name):
    """TileJSON 3.0.0 of one layer: tile URL, zooms, fields, bounds of the caller's data and its
    current data version (``gisgrid.data_version``; pass it as ``?v=`` to tiles)."""
    tl.layer(name)
    s, p = db(), principal()
    url = url_for("tiles.tile", name=name, z=0, x=0, y=0, _external=True).replace("/0/0/0.pbf", "/{z}/{x}/{y}.pbf")
    ext = tl.extent(s, p)
    resp = jsonify(tl.tilejson(name, url, _short(_version(name)), ext[0] if ext else None,
                               ext[1] if ext else None, i18n.t(f"layer_{name}")))
    resp.headers["Cache-Control"] = "private, no-cache"
    return resp


@bp.get("/index.json")
@needs("read")
def index():
    """Every layer's TileJSON URL and data version: what the one map polls for live updates."""
    names = tuple(tl.LAYERS)
    versions = _connections().run(lambda conn: tl.versions_on(conn, names), retry=True)   # one round trip
    out = {name: {"tilejson": url_for("tiles.tilejson", name=name), "data_version": _short(versions[name])}
           for name in names}
    resp = jsonify(out)
    resp.headers["Cache-Control"] = "no-store"
    return resp
