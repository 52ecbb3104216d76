"""Validated writes of layer records: check every record, insert in one statement, link, and
turn database refusals into errors that name the record. Never commits: the caller's
transaction decides, so a bad record leaves nothing of its batch behind.
"""
from __future__ import annotations

from geoalchemy2.shape import from_shape
from sqlalchemy import insert, select
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
