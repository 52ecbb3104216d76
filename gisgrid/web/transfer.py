"""Layer files through the API: upload an import (multipart, the ``import`` permission, the same
rules and report as ``gisgrid import``) and download an export (the ``export`` permission,
filtered by jurisdiction, personal data masked unless the role holds ``pii`` and gives a reason).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from flask import Blueprint, jsonify, request, send_file
from werkzeug.utils import secure_filename

from gisgrid import authz
from gisgrid.errors import GisgridError, InvalidInput
from gisgrid.io import exporter, fields, formats, importer
from gisgrid.web import db, settings
from gisgrid.web.auth import needs, principal

bp = Blueprint("transfer", __name__, url_prefix="/api")
_FLAGS = ("dry_run", "skip_invalid", "make_valid")


class ImportRefused(GisgridError):
    """Problems in the file: nothing was written; the report says what and where."""
    status = 422

    def __init__(self, report: importer.Report):
        super().__init__(f"{len(report.problems)} problem(s) in {report.file}: nothing was written", field="file")
        self.report = report

    def to_dict(self) -> dict:
        return {**super().to_dict(), "report": self.report.to_dict()}


def upload_limit() -> None:
    """Before every other hook (the NUL and CSRF checks read the form): imports may be larger than other
    requests, up to ``GISGRID_IMPORT_LIMIT_MB``."""
    if request.endpoint == "transfer.import_file":
        request.max_content_length = int(settings().import_limit_mb * 1024 * 1024)


def _flag(name: str) -> bool:
    v = request.form.get(name, "0").strip().lower()
    if v not in ("0", "1", "true", "false", ""):
        raise InvalidInput(f"{name} must be 0/1 or true/false, got {v!r}", field=name)
    return v in ("1", "true")


def _layer(layer: str) -> str:
    return fields.get(layer).name


@bp.post("/import/<layer>")
@needs("import")
def import_file(layer):
    """Import a layer file: all or nothing by default; the report lists every problem.
    ---
    post:
      summary: Import a layer file (导入图层)
      parameters:
        - {name: layer, in: path, required: true, schema: {type: string, enum: [admin_area, grid, building,
           resident, place, patrol_point, patrol_route, road, incident]}}
      requestBody:
        required: true
        content:
          multipart/form-data:
            schema:
              type: object
              required: [file]
              properties:
                file: {type: string, format: binary, description: "GeoJSON, GeoPackage, zipped Shapefile, KML, CSV or XLSX"}
                crs: {type: string, description: "EPSG:n, gcj02 or bd09; default what the file declares, else EPSG:4326"}
                mode: {type: string, enum: [insert, upsert, replace], default: insert}
                format: {type: string, enum: [geojson, gpkg, shp, kml, csv, xlsx]}
                map: {type: array, items: {type: string}, description: "field=column"}
                dry_run: {type: string, enum: ["0", "1", "true", "false"]}
                skip_invalid: {type: string, enum: ["0", "1", "true", "false"]}
                make_valid: {type: string, enum: ["0", "1", "true", "false"]}
      responses:
        200:
          description: the report (written, or a clean dry run)
          content: {application/json: {schema: {$ref: '#/components/schemas/ImportReport'}}}
        400: {$ref: '#/components/responses/BadRequest'}
        401: {$ref: '#/components/responses/Unauthenticated'}
        403: {$ref: '#/components/responses/Forbidden'}
        413: {$ref: '#/components/responses/TooLarge'}
        422:
          description: problems in the file; nothing was written; the report names each
          content: {application/json: {schema: {$ref: '#/components/schemas/Error'}}}
    """
    layer = _layer(layer)
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        raise InvalidInput("send the file as multipart/form-data field 'file'", field="file")
    mode = request.form.get("mode", "insert")
    mapping = {}
    for pair in request.form.getlist("map"):
        target, sep, column = pair.partition("=")
        if not sep or not target.strip() or not column.strip():
            raise InvalidInput(f"map must be field=column, got {pair!r}", field="map")
        mapping[target.strip()] = column.strip()
    flags = {k: _flag(k) for k in _FLAGS}
    p = principal()
    s = db()
    name = secure_filename(upload.filename) or "upload"
    with tempfile.TemporaryDirectory(prefix="gisgrid-import-") as tmp:
        path = Path(tmp) / ("upload" + Path(name).suffix.lower())
        upload.save(path)
        rep = importer.run(s, layer, path, crs=request.form.get("crs") or None, mapping=mapping, mode=mode,
                           fmt=request.form.get("format") or None, actor=p.username, name=upload.filename,
                           within=None if p.everywhere else _jurisdiction(s, p), **flags)
    if not rep.written and not (rep.dry_run and rep.ok):
        s.rollback()
        raise ImportRefused(rep)
    s.commit()
    return jsonify(rep.to_dict())


def _jurisdiction(session, p: authz.Principal):
    """The union of the caller's admin areas and grids (EPSG:4326)."""
    import shapely
    from sqlalchemy import text

    codes = list(p.jurisdiction)
    wkb = session.execute(text(
        "SELECT ST_AsBinary(ST_Union(geom)) FROM (SELECT geom FROM admin_area WHERE code = ANY(:c) AND geom IS NOT NULL "
        "UNION ALL SELECT geom FROM grid WHERE valid_to IS NULL AND code = ANY(:c)) j"), {"c": codes}).scalar()
    return shapely.Polygon() if wkb is None else shapely.from_wkb(bytes(wkb))


@bp.get("/export/<layer>")
@needs("export")
def export_file(layer):
    """Download a layer as the caller may see it; residents masked unless ``unmask=1&reason=…``
    by a role with the PII permission (audited per resident).
    ---
    get:
      summary: Export a layer file (导出图层)
      parameters:
        - {name: layer, in: path, required: true, schema: {type: string, enum: [admin_area, grid, building,
           resident, place, patrol_point, patrol_route, road, incident]}}
        - {name: format, in: query, required: false, schema: {type: string, enum: [geojson, gpkg, shp, csv, xlsx],
           default: geojson}}
        - {name: crs, in: query, required: false, schema: {type: string, default: "EPSG:4326",
           enum: ["EPSG:4326", "EPSG:4490", "gcj02", "bd09"]}}
        - {name: area, in: query, required: false, schema: {type: string}, description: "an admin area or grid code"}
        - {name: unmask, in: query, required: false, schema: {type: string, enum: ["0", "1", "true", "false"]}}
        - {name: reason, in: query, required: false, schema: {type: string, maxLength: 500}}
      responses:
        200:
          description: the file
          content:
            application/geo+json: {schema: {type: string, format: binary}}
            application/geopackage+sqlite3: {schema: {type: string, format: binary}}
            application/zip: {schema: {type: string, format: binary}}
            text/csv: {schema: {type: string, format: binary}}
            application/vnd.openxmlformats-officedocument.spreadsheetml.sheet: {schema: {type: string, format: binary}}
        400: {$ref: '#/components/responses/BadRequest'}
        401: {$ref: '#/components/responses/Unauthenticated'}
        403: {$ref: '#/components/responses/Forbidden'}
    """
    import io

    layer = _layer(layer)
    a = request.args
    fmt = a.get("format", "geojson")
    if fmt not in formats.EXPORT_FORMATS:
        raise InvalidInput(f"format must be one of {', '.join(formats.EXPORT_FORMATS)}, got {fmt!r}", field="format")
    unmask = a.get("unmask") in ("1", "true")
    p, s = principal(), db()
    with tempfile.TemporaryDirectory(prefix="gisgrid-export-") as tmp:
        path = Path(tmp) / f"{layer}{formats.EXTENSIONS[fmt]}"
        exporter.export(s, layer, path, fmt=fmt, crs=a.get("crs", "EPSG:4326"), principal=p, area=a.get("area") or None,
                        unmask=unmask, reason=a.get("reason"))
        data = path.read_bytes()
    s.commit()
    return send_file(io.BytesIO(data), mimetype=formats.MEDIA_TYPES[fmt], as_attachment=True,
                     download_name=path.name)
