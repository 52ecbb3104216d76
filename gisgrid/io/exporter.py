"""Export a layer to a file, as the caller may see it.

Rows are filtered by the caller's jurisdiction (:func:`gisgrid.authz.scope_sql` and friends)
and optionally by an admin area or grid code; residents' ID numbers and phones are exported
masked unless the caller holds the ``pii`` permission and gives a reason, and then every
unmasked resident gets a ``read_pii`` audit row. Every export gets one ``export`` audit row.

GIS formats (GeoJSON, GeoPackage, zipped Shapefile) use the field names (Shapefile: the short
ones); spreadsheets (CSV, XLSX) are what a street office asks for: one row a record, Chinese
headers, admin and grid names resolved, points as 经度/纬度 and other shapes as WKT. Geometries
are written in EPSG:4326, EPSG:4490, gcj02, bd09 or any EPSG code; files in GCJ-02/BD-09
declare no CRS (none exists for them), so say ``--crs`` again when importing them.
"""
from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from sqlalchemy import text
from sqlalchemy.orm import Session

from gisgrid import authz, pii
from gisgrid.errors import InvalidInput
from gisgrid.io import fields as F
from gisgrid.io import formats
from gisgrid.layers import audit, linking
from gisgrid.spatial import crs as crs_mod

# The links (``<layer>_link l``) and the names they resolve to: the one place exports read them.
_LINK_COLUMNS = ("l.grid_code, gg.name AS grid_name, l.community_code, ac.name AS community_name, "
                 "l.street_code, ast.name AS street_name, l.district_code, ad.name AS district_name")


def _link_join(layer: str) -> str:
    return (linking.join_sql(layer, "t", "l") + " LEFT JOIN grid gg ON gg.id = l.grid_id "
            "LEFT JOIN admin_area ac ON ac.code = l.community_code LEFT JOIN admin_area ast "
            "ON ast.code = l.street_code LEFT JOIN admin_area ad ON ad.code = l.district_code")



_AREA_COLUMNS = ("t.community_code, ac.name AS community_name, t.street_code, ast.name AS street_name, "
                 "t.district_code, ad.name AS district_name")
_AREA_JOIN = ("LEFT JOIN admin_area ac ON ac.code = t.community_code LEFT JOIN admin_area ast "
              "ON ast.code = t.street_code LEFT JOIN admin_area ad ON ad.code = t.district_code")


def _select(spec: F.Layer, unmask: bool) -> str:
    own = []
    for f in spec.fields:
        if spec.name == "resident" and f.name in ("id_number", "phone"):
            own.append(f"t.{f.name}_enc" if unmask else f"t.{f.name}_masked")
        elif f.name == "building_code":
            own.append("b.code AS building_code")
        else:
            own.append(f"t.{f.name}")
    if spec.name == "admin_area":
        extra, join = "t.level, t.district_code, t.street_code, t.community_code", ""
    elif spec.name == "grid":
        extra, join = _AREA_COLUMNS, _AREA_JOIN
    elif spec.linked:
        extra, join = _LINK_COLUMNS, _link_join(spec.name)
    else:
        extra, join = "", ""
    if spec.name == "resident":
        join += " LEFT JOIN building b ON b.id = t.building_id"
    cols = ", ".join(own + ([extra] if extra else []) + ["ST_AsBinary(t.geom) AS wkb"])
    return f"SELECT {cols} FROM {spec.name} t {join}"


def _where(spec: F.Layer, principal: authz.Principal, area: str | None) -> tuple[str, dict]:
    if spec.name == "admin_area":
        scope = authz.admin_area_sql(principal, "t")
    elif spec.name == "grid":
        scope = authz.scope_sql(principal, "t", grid_col="code")
    elif spec.linked:
        scope = authz.scope_sql(principal, "l")
    else:
        scope = authz.area_geom_sql(principal, "t")
    conds, params = [scope[0]], dict(scope[1])
    if spec.name == "grid":
        conds.append("t.valid_to IS NULL")
    if area:
        if not area.isdigit() or len(area) < 12:
            raise InvalidInput(f"area must be a 12-digit admin code or a grid code, got {area!r}", field="area")
        params["area"] = area
        if spec.name == "admin_area":
            conds.append("(t.code = :area OR t.district_code = :area OR t.street_code = :area)")
        elif spec.name == "grid":
            conds.append("(t.code = :area OR t.community_code = :area OR t.street_code = :area "
                         "OR t.district_code = :area)")
        elif spec.linked:
            conds.append("(l.grid_code = :area OR l.community_code = :area OR l.street_code = :area "
                         "OR l.district_code = :area)")
        else:
            conds.append("EXISTS (SELECT 1 FROM admin_area a WHERE a.code = :area AND ST_Intersects(a.geom, t.geom)) "
                         "OR EXISTS (SELECT 1 FROM grid g WHERE g.valid_to IS NULL AND g.code = :area "
                         "AND ST_Intersects(g.geom, t.geom))")
    return " AND ".join(f"({c})" for c in conds), params


def records(session: Session, layer: str, principal: authz.Principal, *, area: str | None = None,
            unmask: bool = False) -> pd.DataFrame:
    """The layer's records the principal may see, ordered by code: one column a field (resident
    ID numbers and phones clear only with ``unmask``), the derived columns, ``geometry`` in EPSG:4326."""
    spec = F.get(layer)
    where, params = _where(spec, principal, area)
    rows = session.execute(text(f"{_select(spec, unmask)} WHERE {where} ORDER BY t.code"), params).mappings().all()
    derived = [f.name for f in F.derived_for(spec)]
    names = [f.name for f in spec.fields] + derived
    data = {n: [] for n in names}
    wkb = []
    vault = pii.vault() if unmask and spec.name == "resident" else None
    for r in rows:
        for f in spec.fields:
            if spec.name == "resident" and f.name in ("id_number", "phone"):
                if vault is not None:
                    enc = r[f"{f.name}_enc"]
                    data[f.name].append(vault.decrypt(enc.encode()) if enc else None)
                else:
                    data[f.name].append(None)
            else:
                data[f.name].append(r[f.name])
        for d in derived:
            data[d].append(r.get(d) if d in r else None)
        wkb.append(r["wkb"])
    if spec.name == "resident" and not unmask:
        data["id_number_masked"] = [r["id_number_masked"] for r in rows]
        data["phone_masked"] = [r["phone_masked"] for r in rows]
        data.pop("id_number"), data.pop("phone")
    elif spec.name == "resident":
        data.pop("id_number_masked"), data.pop("phone_masked")
    frame = pd.DataFrame(data, columns=[n for n in names if n in data], dtype=object)
    frame["geometry"] = shapely.from_wkb(np.array([None if w is None else bytes(w) for w in wkb], dtype=object))
    return frame


def _plain(frame: pd.DataFrame, spec: F.Layer) -> pd.DataFrame:
    """Values as text or numbers every format can hold: JSON text, tags joined by ';', ISO
    dates and times."""
    out = frame.copy()
    for f in spec.fields:
        if f.name not in out:
            continue
        col = out[f.name]
        if f.kind == "json":
            out[f.name] = [None if v is None else json.dumps(v, ensure_ascii=False, sort_keys=True) for v in col]
        elif f.kind == "tags":
            out[f.name] = [None if v is None else ";".join(v) for v in col]
        elif f.kind in ("date", "datetime"):
            out[f.name] = [None if v is None or v is pd.NaT else v.isoformat() for v in col]
        elif f.kind == "int":
            out[f.name] = pd.array([None if v is None or v != v else int(v) for v in col], dtype="Int64")
        elif f.kind == "float":
            out[f.name] = pd.array([None if v is None else float(v) for v in col], dtype="Float64")
    return out


def export(session: Session, layer: str, path, *, fmt: str | None = None, crs: str = "EPSG:4326",
           principal: authz.Principal, area: str | None = None, unmask: bool = False,
           reason: str | None = None, progress=None) -> int:
    """Write the layer's records the principal may see to ``path``.

    Parameters
    ----------
    session : Session
        The caller's; audit rows are added, not committed.
    layer : str
    path : path-like
    fmt : {"geojson", "gpkg", "shp", "csv", "xlsx"}, optional
        From the suffix when omitted (``.zip`` is a zipped Shapefile).
    crs : str, default "EPSG:4326"
        ``EPSG:4326``, ``EPSG:4490``, ``gcj02``, ``bd09`` or any EPSG code.
    principal : Principal
        Whose jurisdiction; unmasking needs its ``pii`` permission.
    area : str, optional
        Only records of this admin area or grid code.
    unmask, reason
        Clear ID numbers and phones of residents (with a reason; audited per resident).
    progress : callable, optional
        ``progress(step, n)`` after reading, converting and writing.

    Returns
    -------
    int
        Records written.

    Raises
    ------
    InvalidInput, Forbidden
    """
    spec = F.get(layer)
    path = Path(path)
    fmt = fmt or formats.format_of(path)
    if fmt not in formats.EXPORT_FORMATS:
        raise InvalidInput(f"cannot export to {fmt!r}; formats: {', '.join(formats.EXPORT_FORMATS)}", field="format")
    target = crs_mod.canonical(crs)
    unmask = unmask and spec.name == "resident"
    if unmask:
        authz.require(principal, "pii")
        if not reason or not reason.strip():
            raise InvalidInput("exporting unmasked personal data needs a reason", field="reason")
    tick = progress or (lambda *_: None)
    frame = records(session, layer, principal, area=area, unmask=unmask)
    tick("read", len(frame))
    geoms = crs_mod.from_storage(frame.pop("geometry").to_numpy(), target)
    plain = _plain(frame, spec)
    tick("converted", len(frame))
    if fmt in ("csv", "xlsx"):
        _write_table(plain, geoms, spec, path, fmt)
    else:
        if fmt == "shp":
            kinds = sorted({g.geom_type.replace("Multi", "") for g in geoms if g is not None})
            if len(kinds) > 1:
                raise InvalidInput(f"a Shapefile holds one geometry type; these {spec.name} records mix "
                                   f"{', '.join(kinds)}: export as GeoPackage or GeoJSON", field="format")
            short = {f.name: f.shp for f in (*spec.fields, *F.DERIVED)}
            plain = plain.rename(columns=short)
        epsg = None if target in ("gcj02", "bd09") else target
        formats.write_features(gpd.GeoDataFrame(plain, geometry=list(geoms), crs=epsg), path, fmt, spec.name)
    tick("written", len(frame))
    where, params = _where(spec, principal, area)
    if unmask:
        session.execute(text(
            "INSERT INTO audit_log (actor, action, entity, entity_id, reason, after) "
            "SELECT :a, 'read_pii', 'resident', CAST(t.id AS text), :r, "
            "jsonb_build_object('code', t.code, 'fields', jsonb_build_array('id_number', 'phone'), 'via', 'export') "
            f"FROM resident t {linking.join_sql('resident', 't', 'l')} WHERE {where}"),
            {**params, "a": principal.username, "r": reason.strip()[:500]})
    audit.record(session, principal.username, "export", layer, None,
                 after={"format": fmt, "crs": target, "area": area, "rows": len(frame), "unmasked": unmask})
    return len(frame)


def _write_table(plain: pd.DataFrame, geoms, spec: F.Layer, path: Path, fmt: str) -> None:
    headers = {f.name: f.zh for f in (*spec.fields, *F.DERIVED)}
    out = plain.rename(columns=headers)
    if spec.points:
        xy = shapely.get_coordinates(geoms) if len(geoms) else np.empty((0, 2))
        present = ~shapely.is_missing(geoms) if len(geoms) else np.array([], dtype=bool)
        lon = np.full(len(geoms), np.nan)
        lat = np.full(len(geoms), np.nan)
        lon[present], lat[present] = xy[:, 0], xy[:, 1]
        out[F.LON.zh], out[F.LAT.zh] = lon, lat
    else:
        out[F.WKT.zh] = [None if g is None else shapely.to_wkt(g, rounding_precision=-1) for g in geoms]
    formats.write_table(out, path, fmt, sheet=spec.zh)
