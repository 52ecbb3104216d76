"""Validated writes of layer records: check every record, insert in one statement, link, and
turn database refusals into errors that name the record. Never commits: the caller's
transaction decides, so a bad record leaves nothing of its batch behind.
"""
from __future__ import annotations

import logging
import time

from geoalchemy2.shape import from_shape
from sqlalchemy import insert, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from gisgrid.db.base import SRID
from gisgrid.db.errors import translate
from gisgrid.errors import DuplicateCode, InvalidInput, UnknownReference
from gisgrid import pii
from gisgrid.layers import admin_areas, audit, linking, residents
from gisgrid.layers.admin_areas import AdminArea
from gisgrid.layers.buildings import Building
from gisgrid.layers.grids import Grid
from gisgrid.layers.incidents import Incident
from gisgrid.layers.patrol import PatrolPoint, PatrolRoute
from gisgrid.layers.places import Place
from gisgrid.layers.residents import Resident
from gisgrid.layers.roads import Road
from gisgrid.spatial import crs as crs_mod
from gisgrid.spatial.geometry import check, from_geojson

log = logging.getLogger(__name__)

#: layer → (model, allowed geometry types, geometry required)
SPEC = {
    "admin_area": (AdminArea, ("MultiPolygon",), False),
    "grid": (Grid, ("MultiPolygon",), True),
    "building": (Building, ("Polygon", "MultiPolygon", "Point"), True),
    "resident": (Resident, ("Point",), False),
    "place": (Place, ("Point",), True),
    "patrol_point": (PatrolPoint, ("Point",), True),
    "patrol_route": (PatrolRoute, ("LineString", "MultiLineString"), True),
    "road": (Road, ("LineString", "MultiLineString"), True),
    "incident": (Incident, ("Point",), True),
}
_DERIVED = {"id", "geom", "anchor", "grid_id", "grid_code", "community_code", "street_code", "district_code"}


def _columns(model) -> set[str]:
    return {c.key for c in model.__table__.columns} - _DERIVED


def _admin_area(session: Session, rec: dict, label: str) -> dict:
    code = rec.get("code")
    rec["level"] = admin_areas.level_of(code)
    rec.update({k: v for k, v in admin_areas.chain(code).items()})
    if rec["level"] != "district":
        parent = rec.get("parent_code") or (rec["street_code"] if rec["level"] == "community" else rec["district_code"])
        if session.scalar(select(AdminArea.code).where(AdminArea.code == parent)) is None:
            raise UnknownReference(f"parent admin area {parent!r} does not exist", record=label, field="parent_code")
        rec["parent_code"] = parent
    return rec


def _grid(session: Session, rec: dict, label: str) -> dict:
    community = rec.get("community_code") or (rec.get("code") or "")[:12]
    area = session.scalar(select(AdminArea).where(AdminArea.code == community))
    if area is None or area.level != "community":
        raise UnknownReference(f"community {community!r} does not exist", record=label, field="community_code")
    if not str(rec.get("code", "")).startswith(community):
        raise InvalidInput(f"grid code {rec.get('code')!r} must extend its community code {community}",
                           record=label, field="code")
    rec.update(community_code=community, street_code=area.street_code, district_code=area.district_code)
    rec.setdefault("kind", area.kind)
    return rec


def _resident(session: Session, rec: dict, label: str) -> dict:
    bcode = rec.pop("building_code", None)
    if bcode is not None:
        bid = session.scalar(select(Building.id).where(Building.code == bcode))
        if bid is None:
            raise UnknownReference(f"building {bcode!r} does not exist", record=label, field="building_code")
        rec["building_id"] = bid
    if rec.get("building_id") is None and rec.get("geom") is None:
        raise InvalidInput("a resident needs a building (building_code) or a point (geometry)",
                           record=label, field="building_code")
    clear = {}
    for name, check in (("id_number", pii.check_id_number), ("phone", pii.check_phone)):
        value = rec.pop(name, None)
        if value is not None:
            try:
                clear[name] = check(value)
            except InvalidInput as e:
                raise InvalidInput(e.message, record=label, field=name) from None
    if clear:
        rec.update(residents.protect(pii.vault(), clear.get("id_number"), clear.get("phone")))
    return rec


_EXTRA_FIELDS = {"resident": {"building_code", "id_number", "phone"}, "grid": {"community_code"}}
_PREPARE = {"admin_area": _admin_area, "grid": _grid, "resident": _resident}


def _audit_value(rec: dict) -> dict:
    """What the audit log keeps of a written record: every column but ciphertexts and blind
    indexes (the masked forms stay), geometry as GeoJSON."""
    import json

    import shapely
    from geoalchemy2.shape import to_shape

    out = {}
    for k, v in rec.items():
        if k.endswith(("_enc", "_index")):
            continue
        if k == "geom" and v is not None:
            v = json.loads(shapely.to_geojson(to_shape(v)))
        elif hasattr(v, "isoformat"):
            v = v.isoformat()
        out[k] = v
    return out


def add(session: Session, layer: str, records: list[dict], *, crs: str = "EPSG:4326",
        actor: str | None = None) -> list[int]:
    """Insert records of one layer and link them, all or nothing.

    Parameters
    ----------
    session : Session
        The caller's; not committed here.
    layer : str
        One of ``SPEC``: admin_area, grid, building, resident, place, patrol_point,
        patrol_route, road, incident.
    records : list of dict
        Column values; the geometry under ``geometry`` as a shapely geometry or a GeoJSON dict,
        in ``crs``. A resident may name its building by ``building_code``.
    crs : str, default "EPSG:4326"
        CRS of the geometries; reprojected to EPSG:4326.
    actor : str, optional
        Who writes; every record gets an audit row (``action="create"``) in the same transaction.

    Returns
    -------
    list of int
        The new ids, in input order.

    Raises
    ------
    InvalidInput, InvalidGeometry, UnknownReference, DuplicateCode
        Naming the record (``layer #n code``) and the field.
    """
    if layer not in SPEC:
        raise InvalidInput(f"unknown layer {layer!r}; layers: {', '.join(SPEC)}", field="layer")
    model, allowed, geom_required = SPEC[layer]
    known = _columns(model) | {"geometry"} | _EXTRA_FIELDS.get(layer, set())
    rows, seen = [], {}
    for i, raw in enumerate(records, start=1):
        label = f"{layer} #{i}" + (f" {raw.get('code')}" if isinstance(raw, dict) and raw.get("code") else "")
        if not isinstance(raw, dict):
            raise InvalidInput(f"expected an object, got {type(raw).__name__}", record=label)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise InvalidInput(f"unknown fields {unknown}; allowed: {sorted(known)}", record=label)
        rec = dict(raw)
        code = rec.get("code")
        if not code:
            raise InvalidInput("code is required", record=label, field="code")
        if code in seen:
            raise DuplicateCode(f"code {code!r} appears twice in this batch (records #{seen[code]} and #{i})",
                                record=label, field="code")
        seen[code] = i
        geom = rec.pop("geometry", None)
        if isinstance(geom, dict):
            geom = from_geojson(geom, record=label)
        if geom is not None:
            geom = check(crs_mod.to_storage(geom, crs), allowed, record=label)
            rec["geom"] = from_shape(geom, srid=SRID)
        elif geom_required:
            raise InvalidInput("geometry is required", record=label, field="geometry")
        if layer in _PREPARE:
            rec = _PREPARE[layer](session, rec, label)
        rows.append(rec)
    if not rows:
        return []
    try:
        with session.begin_nested():
            ids = list(session.scalars(insert(model).returning(model.id, sort_by_parameter_order=True), rows))
            if layer in linking.ORDER:
                linking.link_ids(session, layer, ids)
            audit.record_many(session, actor, "create", layer,
                              [(i, None, _audit_value(r)) for i, r in zip(ids, rows)])
    except DBAPIError as e:
        raise translate(e, record=f"{layer} batch of {len(rows)}") from e
    return ids


# -- bulk: validated frames from imports ------------------------------------------------------------
from sqlalchemy.dialects import postgresql as _pg_dialect

_PG = _pg_dialect.dialect()


def _own(model) -> set[str]:
    """The columns an import writes (not the id, not generated ones)."""
    return {c.key for c in model.__table__.columns} - {"id", "anchor"}


def _prepared(layer: str, frame, mode: str):
    """A frame of :func:`add_frame` with missing values as None, personal data protected, and
    the names of its columns that are not the table's (``building_code``)."""
    model = SPEC[layer][0]
    own = _own(model)
    frame = frame.astype(object)
    frame = frame.where(frame.notna(), None)      # pandas 3 reads missing text as NaN
    if layer == "resident":
        frame = _protected_columns(frame)
        if "building_code" not in frame and mode != "upsert":
            frame["building_code"] = None            # located by their points
    extra = [c for c in frame.columns if c not in own]      # before the links are added
    if set(extra) - {"building_code"}:
        raise InvalidInput(f"columns {sorted(set(extra) - {'building_code'})} are not columns of {model.__tablename__}")
    return frame, extra


def _copy_forms(model, frame) -> None:
    """JSONB and arrays as their text forms for COPY (in place)."""
    import json

    for c in frame.columns:
        kind = getattr(model.__table__.columns.get(c), "type", None)
        if kind is not None and type(kind).__name__ == "JSONB":
            frame[c] = [None if v is None else json.dumps(v, ensure_ascii=False) for v in frame[c]]
        elif kind is not None and type(kind).__name__ == "ARRAY":
            frame[c] = [None if v is None else "{" + ",".join(json.dumps(t, ensure_ascii=False) for t in v) + "}"
                        for v in frame[c]]


def _protected_columns(frame):
    """Clear ID numbers and phones → ciphertext, masked form and blind index (gisgrid.pii)."""
    import numpy as np

    vault = pii.vault()
    ids = frame.pop("id_number") if "id_number" in frame else None
    phones = frame.pop("phone") if "phone" in frame else None
    if ids is not None:
        frame["id_number_enc"] = np.array([None if v is None else vault.encrypt(v).decode() for v in ids], dtype=object)
        frame["id_number_masked"] = np.array([pii.mask_id(v) for v in ids], dtype=object)
        frame["id_number_index"] = np.array([vault.index(v) for v in ids], dtype=object)
    if phones is not None:
        frame["phone_enc"] = np.array([None if v is None else vault.encrypt(v).decode() for v in phones],
                                      dtype=object)
        frame["phone_masked"] = np.array([pii.mask_phone(v) for v in phones], dtype=object)
    return frame


def add_frame(session: Session, layer: str, frame, *, mode: str = "insert", actor: str | None = None,
              source: dict | None = None) -> dict[str, int]:
    """Write a validated frame of one layer in bulk (COPY into a staging table, one INSERT), link
    it and audit it, in the caller's transaction (never commits). A frame large beside its table
    rebuilds the table's GiST indexes rather than inserting into them (see
    :func:`_drop_bulk_indexes`: the layer is locked for the import's duration); new points in
    bulk (:func:`bulk_points`) go through :class:`BulkPoints`.

    Parameters
    ----------
    session : Session
    layer : str
        One of ``SPEC``.
    frame : pandas.DataFrame
        One row a record: the table's columns (values already checked, e.g. by
        :mod:`gisgrid.io.importer`), the geometry under ``geom`` as shapely in EPSG:4326, and for
        residents ``building_code``, clear ``id_number`` and ``phone``.
    mode : {"insert", "upsert", "replace"}
        ``upsert`` updates the columns the frame has of the records whose code is stored
        (a grid is redrawn: the current row retired, a new one inserted, history kept);
        ``replace`` deletes the layer's records first (grids: retires the current ones).
    actor : str, optional
        Audit rows: one ``import`` row with ``source``, the mode, the counts and the ids written
        (``created_ids``, ``updated_ids``: runs ``[[first, last], …]``), and one per record
        deleted or retired (``delete``/``retire``, with its code).

    Returns
    -------
    dict
        ``inserted, updated, deleted``.

    Raises
    ------
    InvalidInput, UnknownReference, DuplicateCode
        What the database refuses (a record still referenced when replacing, …), translated.
    """
    import numpy as np

    from gisgrid.db.bulk import binary_types, copy_binary, copy_frame, ewkb_hex

    if layer not in SPEC:
        raise InvalidInput(f"unknown layer {layer!r}; layers: {', '.join(SPEC)}", field="layer")
    model = SPEC[layer][0]
    table = model.__tablename__
    if bulk_points(session, layer, frame, mode):
        try:
            with session.begin_nested():
                writer = BulkPoints(session, layer, len(frame), mode=mode, actor=actor, source=source)
                try:
                    writer.put(frame)
                finally:
                    writer.close()
                return writer.finish()
        except DBAPIError as e:
            raise translate(e, record=f"{layer} import of {len(frame)} rows") from e
    own = _own(model)
    frame, extra = _prepared(layer, frame, mode)
    # New records (insert, replace) get their ids in the staging table and are linked from it,
    # polygon-driven; an upsert may leave a record's anchor out of the file: linked after writing.
    prelink = layer in linking.ORDER and mode != "upsert"
    located = []          # point layers: their grids found in-process, before anything is written
    if prelink and layer in linking.POINT_LAYERS and "geom" in frame:
        grid_ids = linking.grids_of_points(session, frame["geom"].to_numpy())
        frame["grid_id"] = np.array([None if g < 0 else g for g in grid_ids.tolist()] + [None], dtype=object)[:-1]
        located = ["grid_id"]
    geoms = frame.pop("geom").to_numpy() if "geom" in frame else None
    _copy_forms(model, frame)
    if geoms is not None:
        frame["geom"] = None                      # its EWKB, binary or hex, once the format is known
    cols = [c for c in frame.columns if c in own]
    counts = {"inserted": 0, "updated": 0, "deleted": 0}
    try:
        with session.begin_nested():
            session.execute(text("DROP TABLE IF EXISTS _gisgrid_stage, _gisgrid_written"))
            session.execute(text(
                f"CREATE TEMP TABLE _gisgrid_stage ON COMMIT DROP AS SELECT {', '.join(cols)} FROM {table} WITH NO DATA"))
            by_building = "building_code" in extra
            if by_building:
                session.execute(text("ALTER TABLE _gisgrid_stage ADD COLUMN building_code text"))
            if located:
                session.execute(text("ALTER TABLE _gisgrid_stage ADD COLUMN grid_id integer"))
            if prelink:        # COPY fills it from the layer's sequence (the name from the catalogue)
                seq = session.execute(text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": table}).scalar_one()
                session.execute(text(f"ALTER TABLE _gisgrid_stage ADD COLUMN id bigint "
                                     f"DEFAULT nextval('{seq}'::regclass)"))
            staged = cols + extra + located
            types = binary_types(session, "_gisgrid_stage", staged)
            if geoms is not None:
                frame["geom"] = ewkb_hex(geoms, hex=types is None)
            if types is None:
                copy_frame(session, "_gisgrid_stage", frame[staged])
            else:
                copy_binary(session, "_gisgrid_stage", frame[staged], types)
            counts["deleted"], retired = _clear_for(session, layer, table, mode, actor)
            values = (["id"] if prelink else []) + cols + (["building_id"] if by_building else [])
            select_ = (["s.id"] if prelink else []) + [_or_default(model, c) for c in cols] \
                + (["b.id"] if by_building else [])
            join = " LEFT JOIN building b ON b.code = s.building_code" if by_building else ""
            values, select_ = ", ".join(values), ", ".join(select_)
            conflict = ""
            if mode == "upsert" and layer != "grid":
                updates = [c for c in cols + (["building_id"] if by_building else []) if c != "code"]
                conflict = (" ON CONFLICT (code) DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in updates)
                            if updates else " ON CONFLICT (code) DO NOTHING")
            rebuild = _drop_bulk_indexes(session, table, len(frame))
            if prelink:        # every row is new and the stage holds its id: nothing to return
                session.execute(text(f"INSERT INTO {table} ({values}) SELECT {select_} FROM _gisgrid_stage s{join}"))
                session.execute(text("CREATE TEMP VIEW _gisgrid_written AS "
                                     "SELECT id, code, true AS created FROM _gisgrid_stage"))
            else:
                session.execute(text(
                    f"CREATE TEMP TABLE _gisgrid_written ON COMMIT DROP AS WITH w AS ("
                    f"INSERT INTO {table} ({values}) SELECT {select_} FROM _gisgrid_stage s{join}{conflict} "
                    f"RETURNING id, code, (xmax = 0) AS created) SELECT * FROM w"))
            for ddl in rebuild:            # one sorted build each, then fresh statistics
                session.execute(text(ddl))
            if rebuild:
                session.execute(text(f"ANALYZE {table}"))
            if prelink:
                linking.link_staged(session, layer, "_gisgrid_stage")
            row = session.execute(text("SELECT count(*) FILTER (WHERE created), count(*) FILTER (WHERE NOT created) "
                                       "FROM _gisgrid_written")).one()
            counts["inserted"], counts["updated"] = row[0], row[1]
            if retired:                   # a redrawn grid is a new row beside its retired one
                counts["updated"] = retired
                counts["inserted"] -= retired
            if layer in linking.ORDER and not prelink:
                linking.link_written(session, layer, "_gisgrid_written")
            elif layer in ("grid", "admin_area"):
                linking.relink(session)            # boundaries changed: every record's links
            if layer == "incident":
                session.execute(text(
                    "INSERT INTO incident_event (incident_id, actor, from_state, to_state, note) "
                    "SELECT i.id, :a, NULL, i.state, '[import]' FROM incident i JOIN _gisgrid_written w "
                    "ON w.id = i.id WHERE w.created"), {"a": actor})
            ranges = _id_ranges(session, "_gisgrid_written")
            session.execute(text("DROP VIEW _gisgrid_written" if prelink else "DROP TABLE _gisgrid_written"))
            session.execute(text("DROP TABLE _gisgrid_stage"))
            audit.record(session, actor, "import", layer, None,
                         after={**(source or {}), "mode": mode, **counts, **ranges})
    except DBAPIError as e:
        raise translate(e, record=f"{layer} import of {len(frame)} rows") from e
    return counts


#: an import adding at least this share of a table's rows (and ``BULK_MIN_ROWS``) rebuilds the
#: table's GiST indexes instead of inserting into them
BULK_FRACTION = 0.25
BULK_MIN_ROWS = 50_000


def _drop_bulk_indexes(session: Session, table: str, rows: int) -> list[str]:
    """For a large import relative to ``table``, drop its GiST indexes and return their DDL.

    Inserting a point into a GiST index costs about 13 times what building the index costs
    per row (measured on the city's residents: 1,000,000 points into an index of 1,000,000
    took 37 s, building it over all 2,000,000 took 5.7 s), so past ``BULK_FRACTION`` of the
    table the index is rebuilt, as PostgreSQL's bulk-loading advice says. B-tree indexes (the
    layer's keys and codes, the link table's area index) stay: measured, they cost less to
    keep than to rebuild (the link table's area index: 11 s kept, 5.5 + 11.6 s dropped and rebuilt). DROP INDEX is
    transactional: a failed import restores the index with everything else. The price: the
    table is locked (ACCESS EXCLUSIVE) until the import commits; readers of the layer wait.
    """
    if not _is_bulk(session, table, rows):
        return []
    indexes = session.execute(text(
        "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
        "JOIN pg_am a ON a.oid = i.relam WHERE x.indrelid = CAST(:t AS regclass) AND a.amname = 'gist' "
        "ORDER BY i.relname"), {"t": table}).all()
    for name, _ in indexes:
        session.execute(text(f'DROP INDEX "{name}"'))     # names from the catalogue, never input
    return [ddl for _, ddl in indexes]


def _is_bulk(session: Session, table: str, rows: int) -> bool:
    """Whether ``rows`` new rows are a bulk load for ``table`` (``BULK_MIN_ROWS``, ``BULK_FRACTION``)."""
    if rows < BULK_MIN_ROWS:
        return False
    stored = session.execute(text("SELECT reltuples FROM pg_class WHERE oid = CAST(:t AS regclass)"),
                             {"t": table}).scalar_one()
    return rows >= BULK_FRACTION * max(stored, 0)


def bulk_points(session: Session, layer: str, frame_or_rows, mode: str) -> bool:
    """Whether new records of a point layer (a frame, or a number of rows) are written by
    :class:`BulkPoints`: insert or replace, with a ``geom`` column, a bulk load (``_is_bulk``)."""
    rows = frame_or_rows if isinstance(frame_or_rows, int) else len(frame_or_rows)
    has_geom = isinstance(frame_or_rows, int) or "geom" in frame_or_rows
    return layer in linking.POINT_LAYERS and mode in ("insert", "replace") and has_geom \
        and _is_bulk(session, SPEC[layer][0].__tablename__, rows)


class BulkPoints:
    """Writes a bulk load of new point records (insert or replace) in chunks, inside the
    caller's transaction (and savepoint): what :func:`add_frame` does, arranged so that the
    database works while Python prepares the next chunk.

    1. On creation: the replaced records deleted (``replace``), the layer locked (ACCESS
       EXCLUSIVE: its GiST indexes are dropped, :func:`_drop_bulk_indexes`) and ``rows`` ids
       reserved: nobody else can insert meanwhile, so ``nextval`` + ``setval`` hand out
       consecutive ids, given to the records in the order they are put.
    2. :meth:`put` (this thread): a chunk's personal data protected, ids given, each point's
       grid found in-process (:func:`linking.grid_positions`), the link rows made; then queued.
    3. A second thread, on the session's connection, takes each chunk: COPY into the stage,
       INSERT into the layer, COPY of its link rows into ``<layer>_link``. The caller's thread
       never uses the session meanwhile (it may again after :meth:`close`).
    4. :meth:`finish`: the GiST indexes rebuilt, ANALYZE, the points outside every grid (and
       residents placed by their building) linked by SQL (:func:`linking.link_ids`), one
       ``import`` audit row. Returns the counts.

    A failure anywhere (here or on the second thread: raised by :meth:`finish`) leaves the
    transaction to be rolled back by the caller, which restores everything, the index included.
    """

    def __init__(self, session: Session, layer: str, rows: int, *, mode: str = "insert",
                 actor: str | None = None, source: dict | None = None):
        import queue

        import numpy as np

        self.session, self.layer, self.rows, self.mode, self.actor, self.source = \
            session, layer, rows, mode, actor, source
        self.model = SPEC[layer][0]
        self.table = table = self.model.__tablename__
        self.counts = {"inserted": 0, "updated": 0, "deleted": 0}
        self.counts["deleted"], _ = _clear_for(session, layer, table, mode, actor)
        self.rebuild = _drop_bulk_indexes(session, table, rows)
        session.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))   # held already if an index went
        seq = session.execute(text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": table}).scalar_one()
        self.first = self.next = session.execute(text("SELECT nextval(CAST(:s AS regclass))"), {"s": seq}).scalar_one()
        if rows > 1:
            session.execute(text("SELECT setval(CAST(:s AS regclass), :last)"), {"s": seq, "last": self.first + rows - 1})
        self.grids = linking.current_grids(session)
        self.rest: list = [np.zeros(0, dtype=np.int64)]     # ids linked by SQL at the end
        self.queue: queue.Queue = queue.Queue(maxsize=3)
        self.failed: list[BaseException] = []
        self.thread = None
        self.took = {"prepare": 0.0, "database": 0.0}

    def _start(self, cols: list[str], extra: list[str]) -> None:
        import threading

        from gisgrid.db.bulk import binary_types

        s = self.session
        s.execute(text("DROP TABLE IF EXISTS _gisgrid_stage"))
        s.execute(text(f"CREATE TEMP TABLE _gisgrid_stage ON COMMIT DROP AS SELECT {', '.join(cols)} "
                       f"FROM {self.table} WITH NO DATA"))
        s.execute(text("ALTER TABLE _gisgrid_stage ADD COLUMN id bigint"))
        by_building = "building_code" in extra
        if by_building:
            s.execute(text("ALTER TABLE _gisgrid_stage ADD COLUMN building_code text"))
        self.staged = ["id"] + cols + extra
        self.types = binary_types(s, "_gisgrid_stage", self.staged)
        # a chunk that needs neither the building join nor a column default goes straight in
        self.direct = ["id"] + cols
        self.direct_types = None if self.types is None else binary_types(s, self.table, self.direct)
        self.defaulted = [c for c in cols if _or_default(self.model, c) != f"s.{c}"]
        values = ", ".join(["id"] + cols + (["building_id"] if by_building else []))
        select_ = ", ".join(["s.id"] + [_or_default(self.model, c) for c in cols] + (["b.id"] if by_building else []))
        join = " LEFT JOIN building b ON b.code = s.building_code" if by_building else ""
        self.insert = f"INSERT INTO {self.table} ({values}) SELECT {select_} FROM _gisgrid_stage s{join}"
        self.conn = s.connection()
        self.thread = threading.Thread(target=self._work, name=f"gisgrid-bulk-{self.table}", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        from gisgrid.db.bulk import copy_binary, copy_frame

        raw = self.conn.connection.driver_connection
        while (item := self.queue.get()) is not None:
            if self.failed:
                continue                      # drain: the caller stops at close()
            t0 = time.perf_counter()
            try:
                stage, packed, direct, links, packed_links = item
                if direct:                    # COPY into the layer itself: no stage to write and read
                    t1 = time.perf_counter()
                    _as_dbapi(copy_binary, raw, self.table, stage, self.direct_types, packed)
                else:
                    if self.types is None:
                        copy_frame(raw, "_gisgrid_stage", stage)
                    else:
                        copy_binary(raw, "_gisgrid_stage", stage, self.types, packed)
                    t1 = time.perf_counter()
                    self.conn.exec_driver_sql(self.insert)
                    self.conn.exec_driver_sql("TRUNCATE _gisgrid_stage")
                t2 = time.perf_counter()
                _as_dbapi(linking.copy_links, raw, self.layer, links, packed_links)
                t3 = time.perf_counter()
                for k, v in (("stage", t1 - t0), ("insert", t2 - t1), ("links", t3 - t2)):
                    self.took[k] = self.took.get(k, 0) + v
            except BaseException as e:        # raised by finish() in the caller's thread
                self.failed.append(e)
            self.took["database"] += time.perf_counter() - t0

    def put(self, frame) -> None:
        """Queue a chunk of records (the columns of :func:`add_frame`'s frame, ``geom`` as shapely
        points in EPSG:4326)."""
        import numpy as np
        import shapely

        from gisgrid.db.bulk import ewkb_hex, pack_binary

        t0 = time.perf_counter()
        n = len(frame)
        if self.next + n > self.first + self.rows:
            raise ValueError(f"more records than the {self.rows} reserved")
        frame, extra = _prepared(self.layer, frame, self.mode)
        geoms = frame.pop("geom").to_numpy()
        _copy_forms(self.model, frame)
        frame["geom"] = None
        cols = [c for c in frame.columns if c in _own(self.model)]
        ids = np.arange(self.next, self.next + n, dtype=np.int64)
        self.next += n
        frame["id"] = np.array(ids.tolist() + [None], dtype=object)[:-1]
        if self.thread is None:
            self._start(cols, extra)
        frame["geom"] = ewkb_hex(geoms, hex=self.types is None)
        by_point = frame["building_code"].isna().to_numpy() if "building_code" in frame else np.ones(n, dtype=bool)
        pos = linking.grid_positions(self.grids, geoms)
        linked = by_point & (pos >= 0)
        # in grid order (codes: the link table's area index order), each grid's records by id: the
        # area index then takes its entries page by page instead of all over (a third faster)
        order = np.flatnonzero(linked)[np.argsort(pos[linked], kind="stable")]
        links = linking.link_frame(self.grids, ids[order], pos[order])
        self.rest.append(ids[~linked & (~shapely.is_missing(geoms) | ~by_point)])   # outside every grid, by building
        direct = self.direct_types is not None and by_point.all() \
            and not any(frame[c].isna().any() for c in self.defaulted)
        stage = frame[self.direct if direct else self.staged]
        types = self.direct_types if direct else self.types
        packed = None if types is None else pack_binary(stage, types)              # here: the other
        packed_links = pack_binary(links, linking.LINK_TYPES)                      # thread only waits
        self.took["prepare"] += time.perf_counter() - t0
        if not self.failed:
            self.queue.put((stage, packed, direct, links, packed_links))

    def close(self) -> None:
        """Stop the second thread once it has written what was queued (idempotent)."""
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join()
            self.thread = None

    def finish(self) -> dict[str, int]:
        """Close, then rebuild, analyse, link the rest and audit; the counts. Raises what failed."""
        import numpy as np

        self.close()
        if self.failed:
            raise self.failed[0]
        t0 = time.perf_counter()
        s, n = self.session, self.next - self.first
        for ddl in self.rebuild:            # one sorted build each, then fresh statistics
            s.execute(text(ddl))
        s.execute(text(f"ANALYZE {self.table}"))
        rest = np.concatenate(self.rest)
        if len(rest):
            linking.link_ids(s, self.layer, rest.tolist())
        s.execute(text("DROP TABLE IF EXISTS _gisgrid_stage"))
        self.counts["inserted"] = n
        ranges = {"created_ids": [[int(self.first), int(self.next - 1)]] if n else [], "updated_ids": []}
        audit.record(s, self.actor, "import", self.layer, None,
                     after={**(self.source or {}), "mode": self.mode, **self.counts, **ranges})
        log.info("bulk %s of %d: %s; then index and links %.2f s", self.layer, n,
                 ", ".join(f"{k} {v:.2f} s" for k, v in self.took.items()), time.perf_counter() - t0)
        return self.counts


def _as_dbapi(copy, *args):
    """Run a COPY (psycopg), its refusal raised as SQLAlchemy's DBAPIError like any statement's
    (a stored code: IntegrityError wrapping UniqueViolation), for the importer and translate()."""
    import psycopg

    try:
        return copy(*args)
    except psycopg.Error as e:
        raise DBAPIError.instance(f"COPY {args[1]}", None, e, psycopg.Error) from e


def _id_ranges(session: Session, written: str) -> dict[str, list[list[int]]]:
    """The ids of an import's written rows as runs ``[[first, last], …]``, created and updated
    apart: what the one ``import`` audit row keeps of its records (new ids come from one
    sequence in file order, so a large insert is a handful of runs)."""
    lo, hi, n, created = session.execute(text(
        f"SELECT min(id), max(id), count(*), bool_and(created) FROM {written}")).one()
    if n == 0:
        return {"created_ids": [], "updated_ids": []}
    if created and hi - lo + 1 == n:            # the usual insert: one run, no sort needed
        return {"created_ids": [[lo, hi]], "updated_ids": []}
    rows = session.execute(text(
        f"SELECT created, min(id), max(id) FROM (SELECT id, created, "
        f"id - row_number() OVER (PARTITION BY created ORDER BY id) AS run FROM {written}) w "
        f"GROUP BY created, run ORDER BY created, min(id)")).all()
    return {"created_ids": [[lo, hi] for created, lo, hi in rows if created],
            "updated_ids": [[lo, hi] for created, lo, hi in rows if not created]}


def _or_default(model, column: str) -> str:
    """``s.column``, or its server default when blank and the column is NOT NULL."""
    col = model.__table__.columns[column]
    if col.nullable or col.server_default is None:
        return f"s.{column}"
    arg = col.server_default.arg           # the model's own constant or SQL function, never input
    if isinstance(arg, str):
        expr = "'" + arg.replace("'", "''") + "'"
    else:
        expr = arg.text if hasattr(arg, "text") else str(arg.compile(dialect=_PG))
    return f"coalesce(s.{column}, CAST({expr} AS {col.type.compile(dialect=_PG)}))"


def _clear_for(session: Session, layer: str, table: str, mode: str, actor: str | None) -> tuple[int, int]:
    """Before the insert: delete (replace) or retire (grids: replace, or upsert of a stored
    code) what the frame replaces, with audit rows. Returns (deleted, retired by upsert)."""
    if layer == "grid" and mode in ("upsert", "replace"):
        which = "valid_to IS NULL" + (" AND code IN (SELECT code FROM _gisgrid_stage)" if mode == "upsert" else "")
        n = session.execute(text(
            "WITH d AS (UPDATE grid SET valid_to = now() WHERE " + which + " RETURNING id, code) "
            "INSERT INTO audit_log (actor, action, entity, entity_id, after) "
            "SELECT :a, 'retire', 'grid', CAST(id AS text), jsonb_build_object('code', code, 'via', 'import') FROM d"),
            {"a": actor}).rowcount
        return (0, n) if mode == "upsert" else (n, 0)
    if mode == "replace":
        return session.execute(text(
            f"WITH d AS (DELETE FROM {table} RETURNING id, code) "
            "INSERT INTO audit_log (actor, action, entity, entity_id, after) "
            f"SELECT :a, 'delete', :e, CAST(id AS text), jsonb_build_object('code', code, 'via', 'import') FROM d"),
            {"a": actor, "e": layer}).rowcount, 0
    return 0, 0
