"""Import a layer file: read → map columns → check every row → write all or nothing.

The report lists every problem as (row, field, value, reason); row numbers are what the user
sees: the line in a spreadsheet (the header is line 1) or the feature number in a GIS file.
Problems without a row (an unknown column, a missing required column) concern the whole file.

Default is all or nothing: one problem and nothing is written. ``skip_invalid`` writes the
good rows (never with a problem of the whole file). ``make_valid`` repairs invalid polygons
and says so in the notes. ``dry_run`` checks everything and writes nothing. Modes: ``insert``
(every code must be new), ``upsert`` (a code already stored is updated, never duplicated),
``replace`` (the layer's records are deleted first, current grids retired).

Checks, in order: the file is readable; columns are known (or mapped); required columns and
values are there; values have their types, allowed values and lengths; geometry is present,
not empty, of an allowed type, valid (or repaired), inside the configured district (the union
of the district admin areas, 50 m of tolerance: catches swapped lat/lon and a GCJ-02/BD-09 file
declared WGS84, and says which it looks like); codes are unique in the file, new in insert
mode; references (parent and community codes, building codes, incident categories) exist;
residents' ID numbers and phones are well formed (the report masks them).
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import shapely
from sqlalchemy import text
from sqlalchemy.orm import Session

from gisgrid import pii
from gisgrid.errors import InvalidInput
from gisgrid.io import fields as F
from gisgrid.io import formats
from gisgrid.spatial import crs as crs_mod

MODES = ("insert", "upsert", "replace")
#: how far outside the district boundary a record may lie (degrees, about 50 m)
EXTENT_TOLERANCE = 0.0005
_SPLIT_TAGS = re.compile(r"[;,，；、]")
_TZ_SUFFIX = re.compile(r"(Z|[+-]\d\d:?\d\d)$")


@dataclass
class Problem:
    row: int | None
    field: str | None
    value: str | None
    reason: str


@dataclass
class Report:
    layer: str
    file: str
    mode: str
    crs: str | None = None
    rows: int = 0
    valid: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    skipped: int = 0
    written: bool = False
    dry_run: bool = False
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, row, field_, value, reason) -> None:
        self.problems.append(Problem(row, field_, _show(field_, value), reason))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["problems"] = [asdict(p) for p in sorted(self.problems, key=_order)]
        return d

    def write_csv(self, path: Path) -> None:
        """The problems as a spreadsheet (UTF-8 with BOM): 行号, 字段, 值, 原因."""
        with open(path, "w", newline="", encoding="utf-8-sig") as fh:
            w = csv.writer(fh)
            w.writerow(["行号 row", "字段 field", "值 value", "原因 reason"])
            for p in sorted(self.problems, key=_order):
                w.writerow(["" if p.row is None else p.row, p.field or "", "" if p.value is None else p.value,
                            p.reason])

    def text(self, limit: int = 50) -> str:
        head = (f"{self.layer} from {self.file}: {self.rows} rows read, {self.valid} valid; "
                + ("dry run, nothing written" if self.dry_run else
                   f"{self.inserted} inserted, {self.updated} updated, {self.deleted} deleted, "
                   f"{self.skipped} skipped" if self.written else "nothing written"))
        lines = [head] + [f"note: {n}" for n in self.notes]
        probs = sorted(self.problems, key=_order)
        for p in probs[:limit]:
            where = "file" if p.row is None else f"row {p.row}"
            lines.append(f"{where}\t{p.field or '-'}\t{'' if p.value is None else p.value}\t{p.reason}")
        if len(probs) > limit:
            lines.append(f"… and {len(probs) - limit} more problems (see the report file)")
        return "\n".join(lines)


def _order(p: Problem):
    return (-1 if p.row is None else p.row, p.field or "")


def _show(field_, value) -> str | None:
    """A value as the report shows it: personal numbers masked, long values cut."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    s = str(value)
    if field_ == "id_number":
        s = pii.mask_id(s)
    elif field_ == "phone":
        s = pii.mask_phone(s)
    return s if len(s) <= 80 else s[:77] + "…"


# -- the steps ----------------------------------------------------------------------------------
def run(session: Session, layer: str, path, *, crs: str | None = None, mapping: dict[str, str] | None = None,
        mode: str = "insert", skip_invalid: bool = False, make_valid: bool = False, dry_run: bool = False,
        fmt: str | None = None, actor: str | None = None, name: str | None = None, within=None,
        progress=None) -> Report:
    """Import one file into ``layer`` in the caller's transaction (never commits).

    Parameters
    ----------
    session : Session
    layer : str
        One of :data:`gisgrid.io.fields.LAYERS`.
    path : path-like
        GeoJSON, GeoPackage, zipped Shapefile, KML, CSV or XLSX.
    crs : str, optional
        The coordinates' CRS (``EPSG:n``, ``gcj02``, ``bd09``); overrides what the file declares.
        Default: the file's, else EPSG:4326.
    mapping : dict, optional
        field → column of the file, for columns named otherwise.
    mode : {"insert", "upsert", "replace"}
    skip_invalid, make_valid, dry_run : bool
    fmt : str, optional
        Format, when the suffix does not tell.
    actor : str, optional
        Who imports (audit rows).
    name : str, optional
        The file's name as the user gave it (uploads are saved under another name).
    within : shapely geometry, optional
        The importer's jurisdiction (EPSG:4326): records outside it are refused.
    progress : callable, optional
        ``progress(step, n)`` after each step.

    Returns
    -------
    Report
        ``written`` says whether anything was written.

    Raises
    ------
    InvalidInput
        Unknown layer or mode, unreadable file.
    """
    tick = progress or (lambda *_: None)
    spec = F.get(layer)
    if mode not in MODES:
        raise InvalidInput(f"mode must be one of {', '.join(MODES)}, got {mode!r}", field="mode")
    path = Path(path)
    rep = Report(layer, name or path.name, mode, dry_run=dry_run)
    table = formats.read(path, fmt, layer=layer)
    rep.notes += table.notes
    rep.rows = len(table.values)
    tick("read", rep.rows)
    cols = _columns(rep, spec, table, mapping or {})
    if rep.problems:
        return rep
    rownum = np.arange(rep.rows) + table.first_row
    for f in spec.fields:
        if f.name not in cols and f.required:
            rep.add(None, f.name, None, f"required column {f.name!r} ({f.zh}) is missing")
    if _streams(session, rep, spec, table, cols, mode, skip_invalid or dry_run):
        return _run_streamed(session, rep, spec, table, cols, rownum, path, crs=crs, make_valid=make_valid,
                             mode=mode, actor=actor, within=within, tick=tick)
    bad = np.zeros(rep.rows, dtype=bool)
    values = {}
    for f in spec.fields:
        if f.name in cols:
            values[f.name], b = _convert(rep, f, table.values[cols[f.name]], rownum)
            bad |= b
    tick("values", rep.rows)
    geoms, b = _geometry(rep, spec, table, cols, rownum, crs, make_valid)
    bad |= b
    tick("geometry", rep.rows)
    if geoms is not None:
        bad |= _extent(rep, session, spec, geoms, rownum, values)
        if within is not None:
            bad |= _within(rep, within, geoms, rownum, bad)
        tick("extent", rep.rows)
    if "code" in values:
        bad |= _duplicates(rep, values["code"], rownum)
        bad |= _references(rep, session, spec, values, rownum, mode)
    if spec.name == "resident":
        bad |= _personal(rep, values, rownum, geoms)
    tick("checked", rep.rows)
    rep.valid = int((~bad).sum())
    file_level = any(p.row is None for p in rep.problems)
    if file_level or (rep.problems and not skip_invalid) or dry_run:
        return rep
    keep = ~bad
    frame = pd.DataFrame({k: np.asarray(v, dtype=object)[keep] for k, v in values.items()}, dtype=object)
    if geoms is not None:
        frame["geom"] = np.asarray(geoms, dtype=object)[keep]
    rep.skipped = int(bad.sum())
    from gisgrid.layers import writes

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    counts = writes.add_frame(session, spec.name, frame, mode=mode, actor=actor,
                              source={"file": rep.file, "sha256": digest, "crs": rep.crs, "skipped": rep.skipped})
    rep.inserted, rep.updated, rep.deleted = counts["inserted"], counts["updated"], counts["deleted"]
    rep.written = True
    tick("written", len(frame))
    return rep


#: rows a streamed import checks and hands to the writer at a time
CHUNK_ROWS = 100_000


def _streams(session, rep: Report, spec: F.Layer, table: formats.Table, cols: dict, mode: str,
             no_write: bool) -> bool:
    """Whether the file is imported streamed (:func:`_run_streamed`): a bulk load of residents
    from lon/lat columns (:func:`gisgrid.layers.writes.bulk_points`), all or nothing, every
    required column there, no building codes (their references need the database while the
    rows are being written)."""
    from gisgrid.layers import writes

    return (spec.name == "resident" and not no_write and not rep.problems and table.geometry is None
            and "lon" in cols and "lat" in cols and "building_code" not in cols
            and writes.bulk_points(session, spec.name, rep.rows, mode))


def _run_streamed(session, rep: Report, spec: F.Layer, table: formats.Table, cols: dict, rownum, path, *,
                  crs, make_valid, mode, actor, within, tick) -> Report:
    """:func:`run` for a bulk load of points, all or nothing: the rows are checked
    ``CHUNK_ROWS`` at a time, and each clean chunk goes to a
    :class:`gisgrid.layers.writes.BulkPoints` writer, whose second thread writes it while this
    one checks the next (inside a savepoint). The checks and the report are :func:`run`'s;
    what needs the whole file comes after the last chunk: codes repeated in the file, then the
    codes already stored, which the table's unique index refuses as the rows go in (an insert
    that fails on it is rolled back and the stored codes reported, as :func:`run` reports them).
    Any problem: the savepoint is rolled back, nothing is written."""
    from psycopg import errors as pg
    from sqlalchemy.exc import DBAPIError

    from gisgrid.db.errors import translate
    from gisgrid.layers import writes

    n = rep.rows
    bad = np.zeros(n, dtype=bool)
    codes = np.full(n, None, dtype=object)
    district = district_boundary(session)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    savepoint = session.begin_nested()
    writer = None
    try:
        for start in range(0, n, CHUNK_ROWS):
            part = formats.Table(table.values.iloc[start:start + CHUNK_ROWS], crs=table.crs, tabular=table.tabular)
            rn = rownum[start:start + CHUNK_ROWS]
            values, chunk_bad = {}, np.zeros(len(rn), dtype=bool)
            for f in spec.fields:
                if f.name in cols:
                    values[f.name], b = _convert(rep, f, part.values[cols[f.name]], rn)
                    chunk_bad |= b
            geoms, b = _geometry(rep, spec, part, cols, rn, crs, make_valid)
            chunk_bad |= b
            if geoms is not None:
                chunk_bad |= _extent(rep, session, spec, geoms, rn, values, district=district)
                if within is not None:
                    chunk_bad |= _within(rep, within, geoms, rn, chunk_bad)
            chunk_bad |= _personal(rep, values, rn, geoms)
            bad[start:start + len(rn)] = chunk_bad
            codes[start:start + len(rn)] = values["code"]
            if rep.problems:
                if writer is not None:
                    writer.close()            # nothing more to write: the savepoint goes back
                if geoms is None:
                    break                     # a problem of the whole file (the CRS)
                continue
            frame = pd.DataFrame({k: np.asarray(v, dtype=object) for k, v in values.items()}, dtype=object)
            frame["geom"] = geoms
            if writer is None:
                writer = writes.BulkPoints(session, spec.name, n, mode=mode, actor=actor,
                                           source={"file": rep.file, "sha256": digest, "crs": rep.crs, "skipped": 0})
            writer.put(frame)
        tick("checked", n)
        bad |= _duplicates(rep, codes, rownum)
        if rep.problems:
            if writer is not None:
                writer.close()
            savepoint.rollback()
            if not any(p.row is None for p in rep.problems):
                bad |= _references(rep, session, spec, {"code": codes}, rownum, mode)
        else:
            try:
                counts = writer.finish()
            except DBAPIError as e:
                savepoint.rollback()
                if not isinstance(e.orig, pg.UniqueViolation):
                    raise translate(e, record=f"{spec.name} import of {n} rows") from e
                bad |= _references(rep, session, spec, {"code": codes}, rownum, mode)
                if not rep.problems:          # a unique index other than the code's
                    raise translate(e, record=f"{spec.name} import of {n} rows") from e
            else:
                savepoint.commit()
                rep.inserted, rep.deleted = counts["inserted"], counts["deleted"]
                rep.written = True
                tick("written", n)
    except BaseException:
        if writer is not None:
            writer.close()
        if savepoint.is_active:
            savepoint.rollback()
        raise
    rep.valid = int((~bad).sum())
    rep.notes = list(dict.fromkeys(rep.notes))     # each chunk says the same
    return rep


def _columns(rep: Report, spec: F.Layer, table: formats.Table, mapping: dict[str, str]) -> dict[str, str]:
    """field name (or lon/lat/wkt) → column of the file; unknown and doubled columns reported."""
    names = [str(c) for c in table.values.columns]
    table.values.columns = names
    known = {f.name for f in spec.fields} | {"lon", "lat", "wkt"}
    out: dict[str, str] = {}
    for target, column in mapping.items():
        if target not in known:
            rep.add(None, target, column, f"--map names an unknown field; fields of {spec.name}: "
                                          f"{', '.join(sorted(known))}")
        elif column not in names:
            rep.add(None, target, column, f"--map names a column the file does not have; columns: {', '.join(names)}")
        else:
            out[target] = column
    alias = F.aliases(spec)
    ignored = {f.name for f in F.DERIVED} - {f.name for f in spec.fields}
    for c in names:
        if c in out.values():
            continue
        target = alias.get(c.strip().lower())
        if target is None:
            rep.add(None, c, None, f"unknown column; columns of {spec.name}: "
                                   f"{', '.join(f'{f.name} ({f.zh})' for f in spec.fields)}"
                                   + ("" if table.geometry is not None else ", lon/lat or wkt")
                                   + " (or map it with --map field=column)")
        elif target in ignored:
            continue
        elif target in out:
            rep.add(None, target, c, f"two columns give {target!r}: {out[target]!r} and {c!r}")
        else:
            out[target] = c
    return out


def _is_blank(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NaT or (isinstance(v, str) and not v.strip())


def _blanks(values) -> np.ndarray:
    """Which values are missing: None, NaN, NaT or only spaces (vectorised)."""
    s = pd.Series(np.asarray(values, dtype=object), dtype=object)
    na = s.isna().to_numpy().copy()
    text_ = s[~na].astype(str)
    na[np.flatnonzero(~na)[(text_.str.strip() == "").to_numpy()]] = True
    return na


def _stripped(series: pd.Series) -> np.ndarray | None:
    """A text column (every CSV column) stripped by numpy's vectorised string functions, ``""``
    where missing; None for a column of other values (spreadsheets, GIS attributes)."""
    if not isinstance(series.dtype, pd.StringDtype):
        return None
    return np.strings.strip(np.asarray(series.fillna("").to_numpy(dtype=object), dtype=np.dtypes.StringDType()))


def _blank_series(series: pd.Series) -> np.ndarray:
    """:func:`_blanks` of a column, vectorised for text columns."""
    text_ = _stripped(series)
    return _blanks(series.to_numpy(dtype=object)) if text_ is None else np.strings.str_len(text_) == 0


def _convert(rep: Report, f: F.Field, series: pd.Series, rownum: np.ndarray):
    """Values of one field converted to Python objects (None when blank), and the rows that fail."""
    raw = series.to_numpy(dtype=object)
    text_ = _stripped(series)
    blank = _blanks(raw) if text_ is None else np.strings.str_len(text_) == 0
    out = np.full(len(raw), None, dtype=object)
    bad = np.zeros(len(raw), dtype=bool)
    present = ~blank

    def fail(mask, reason):
        for i in np.flatnonzero(mask):
            rep.add(int(rownum[i]), f.name, raw[i], reason)
        bad[mask] = True

    if f.kind == "text":
        given = raw[present]
        if text_ is not None:
            out[present] = text_[present].astype(object)
        elif all(isinstance(v, str) for v in given):          # every value is text
            out[present] = pd.Series(given, dtype=object).str.strip().to_numpy(dtype=object)
        else:
            out[present] = [_text(v) for v in given]
    elif f.kind in ("int", "float"):
        num = pd.to_numeric(pd.Series(raw[present]), errors="coerce").to_numpy(dtype=float)
        ok = np.isfinite(num)
        if f.kind == "int":
            ok &= np.equal(np.floor(np.where(ok, num, 0)), np.where(ok, num, 0)) & (np.abs(np.where(ok, num, 0)) < 2**31)
        idx = np.flatnonzero(present)
        fail(np.isin(np.arange(len(raw)), idx[~ok]), f"not {'a whole number' if f.kind == 'int' else 'a number'}")
        conv = [int(v) if f.kind == "int" else float(v) for v in num[ok]]
        out[idx[ok]] = np.array(conv + [None], dtype=object)[:-1]
    elif f.kind == "date":
        idx = np.flatnonzero(present)
        parsed = _dates(raw[present]) if text_ is None else _dates(text_[present].astype(object), stripped=True)
        ok = parsed.notna().to_numpy()
        fail(np.isin(np.arange(len(raw)), idx[~ok]), "not a date (YYYY-MM-DD)")
        out[idx[ok]] = np.array(list(parsed[ok].dt.date) + [None], dtype=object)[:-1]
    elif f.kind == "datetime":
        idx = np.flatnonzero(present)
        parsed = _datetimes(raw[present])
        ok = np.array([p is not None for p in parsed], dtype=bool)
        fail(np.isin(np.arange(len(raw)), idx[~ok]), "not a date and time (ISO 8601, e.g. 2026-05-01T08:30:00+08:00)")
        out[idx[ok]] = np.array([p for p in parsed if p is not None] + [None], dtype=object)[:-1]
    elif f.kind == "json":
        for i in np.flatnonzero(present):
            v = raw[i]
            try:
                v = json.loads(v) if isinstance(v, str) else v
            except ValueError:
                v = None
            if isinstance(v, dict):
                out[i] = v
            else:
                fail(np.arange(len(raw)) == i, "not a JSON object")
    elif f.kind == "tags":
        for i in np.flatnonzero(blank):
            out[i] = []
        for i in np.flatnonzero(present):
            v = raw[i]
            out[i] = list(v) if isinstance(v, (list, tuple)) else [t.strip() for t in _SPLIT_TAGS.split(str(v))
                                                                   if t.strip()]
    if f.required:
        fail(blank, f"{f.name} ({f.zh}) is required")
    if f.choices:
        wrong = present & ~bad & ~np.isin(out.astype(str), list(f.choices))
        fail(wrong, f"must be one of {', '.join(f.choices)}")
    if f.max_len and f.kind == "text":
        lengths = np.strings.str_len(text_) if text_ is not None else np.fromiter(
            (0 if v is None else len(v) for v in out), dtype=np.int64, count=len(out))
        long = present & ~bad & (lengths > f.max_len)
        fail(long, f"longer than {f.max_len} characters")
    return out, bad


def _text(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))          # a code typed as a number in a spreadsheet
    return str(v).strip()


def _dates(values, stripped: bool = False) -> pd.Series:
    """Dates parsed (NaT where not a date); ``stripped``: ``values`` are stripped text already."""
    s = pd.Series(values if stripped else [v.isoformat() if hasattr(v, "isoformat") else str(v).strip()
                                           for v in values], dtype=object)
    parsed = pd.to_datetime(s, errors="coerce", format="ISO8601")
    again = parsed.isna()
    if again.any():
        parsed[again] = pd.to_datetime(s[again].str.replace(".", "/").str.replace("-", "/"), errors="coerce",
                                       format="%Y/%m/%d")
    return parsed


def _datetimes(values) -> list:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    shanghai = ZoneInfo("Asia/Shanghai")
    out = []
    for v in values:
        if isinstance(v, datetime):
            d = v
        else:
            try:
                d = datetime.fromisoformat(str(v).strip().replace("Z", "+00:00"))
            except ValueError:
                out.append(None)
                continue
        out.append(d if d.tzinfo else d.replace(tzinfo=shanghai))   # a time without zone is Beijing time
    return out


# -- geometry -------------------------------------------------------------------------------------
def _geometry(rep: Report, spec: F.Layer, table: formats.Table, cols: dict, rownum, crs, make_valid):
    n = len(rownum)
    bad = np.zeros(n, dtype=bool)
    declared = table.crs
    try:
        use = crs_mod.canonical(crs) if crs else (crs_mod.canonical(declared) if declared else "EPSG:4326")
    except InvalidInput as e:
        rep.add(None, "crs", crs or declared, e.message)
        return None, bad
    if crs and declared and crs_mod.canonical(crs) != _safe_canonical(declared):
        rep.notes.append(f"the file declares {declared}; --crs {use} used instead")
    if not crs and not declared:
        rep.notes.append(f"the file declares no CRS; {use} assumed (give --crs if it is another)")
    rep.crs = use
    if table.geometry is not None:
        geoms = np.asarray(table.geometry.values, dtype=object)
    elif "lon" in cols and "lat" in cols and "Point" in spec.geometry:
        return _lonlat_points(rep, spec, table.values[cols["lon"]], table.values[cols["lat"]], rownum, use, bad)
    elif "lon" in cols and "lat" in cols:
        geoms = _points(rep, table.values[cols["lon"]], table.values[cols["lat"]], rownum, bad)
    elif "wkt" in cols:
        geoms = _wkt(rep, table.values[cols["wkt"]], rownum, bad)
    else:
        if spec.geometry_required:
            rep.add(None, "geometry", None, "no geometry: give lon and lat columns (经度, 纬度) or a WKT column"
                    if spec.points else "no geometry: give a WKT column (几何(WKT))")
        return None, bad
    missing = shapely.is_missing(geoms) & ~bad
    if spec.geometry_required:
        for i in np.flatnonzero(missing):
            rep.add(int(rownum[i]), "geometry", None, "geometry is missing")
        bad |= missing
    has = np.flatnonzero(~missing & ~bad)
    # in 2D (new geometries): KML and many GPS files carry a Z the layers do not store
    g = shapely.force_2d(geoms[has]) if len(has) else np.array([], dtype=object)
    g = np.asarray(g, dtype=object)
    _check_shapes(rep, spec, g, has, rownum, bad)
    ok = has[~bad[has]]
    sub = g[~bad[has]]
    if len(ok):
        try:
            sub = np.asarray(crs_mod.to_storage(sub, use), dtype=object)
        except Exception as e:  # pyproj refuses some coordinates outright
            rep.add(None, "crs", use, f"cannot transform the geometries from {use}: {e}")
            return None, bad
        sub = _ranges_and_validity(rep, spec, sub, ok, rownum, bad, make_valid)
    out = np.full(n, None, dtype=object)
    out[ok] = sub
    out[bad] = None
    return out, bad


def _safe_canonical(c):
    try:
        return crs_mod.canonical(c)
    except InvalidInput:
        return None


def _coordinates(rep, lon, lat, rownum, bad):
    """The lon/lat columns as float arrays (NaN where not both given), their problems reported."""
    x = pd.to_numeric(lon, errors="coerce").to_numpy(dtype=float)
    y = pd.to_numeric(lat, errors="coerce").to_numpy(dtype=float)
    blank_x, blank_y = _blank_series(lon), _blank_series(lat)
    for arr, blank, raw, name in ((x, blank_x, lon.to_numpy(dtype=object), "lon"),
                                  (y, blank_y, lat.to_numpy(dtype=object), "lat")):
        wrong = ~blank & ~np.isfinite(arr)
        for i in np.flatnonzero(wrong):
            rep.add(int(rownum[i]), name, raw[i], "not a number")
        bad |= wrong
    half = (blank_x ^ blank_y)
    for i in np.flatnonzero(half & ~bad):
        rep.add(int(rownum[i]), "lon" if blank_x[i] else "lat", None, "lon and lat must be given together")
    bad |= half
    both = np.isfinite(x) & np.isfinite(y)
    return np.where(both, x, np.nan), np.where(both, y, np.nan)


def _points(rep, lon, lat, rownum, bad):
    x, y = _coordinates(rep, lon, lat, rownum, bad)
    both = np.isfinite(x)
    out = np.full(len(x), None, dtype=object)
    out[both] = shapely.points(x[both], y[both])
    return out


def _lonlat_points(rep, spec, lon, lat, rownum, use, bad):
    """:func:`_geometry` for lon/lat columns of a layer that takes points, on the coordinate
    arrays: the same checks, problems and result, without a geometry object per step (a point
    made of two finite numbers is never empty nor invalid). A million points in a fraction of
    the time."""
    x, y = _coordinates(rep, lon, lat, rownum, bad)
    given = np.isfinite(x)
    if spec.geometry_required:
        missing = ~given & ~bad
        for i in np.flatnonzero(missing):
            rep.add(int(rownum[i]), "geometry", None, "geometry is missing")
        bad |= missing
    ok = np.flatnonzero(given & ~bad)
    try:
        sx, sy = (np.asarray(v, dtype=float) for v in crs_mod.xy_to_storage(x[ok], y[ok], use))
    except Exception as e:  # pyproj refuses some coordinates outright
        rep.add(None, "crs", use, f"cannot transform the geometries from {use}: {e}")
        return None, bad
    finite = np.isfinite(sx) & np.isfinite(sy)
    inside = finite & (np.abs(sx) <= 180) & (np.abs(sy) <= 90)
    for j in np.flatnonzero(~inside):
        rep.add(int(rownum[ok[j]]), "geometry", f"x {sx[j]:.6g}..{sx[j]:.6g}, y {sy[j]:.6g}..{sy[j]:.6g}",
                _OUT_OF_RANGE if finite[j] else _NOT_FINITE)
    bad[ok[~inside]] = True
    out = np.full(len(x), None, dtype=object)
    out[ok[inside]] = shapely.points(sx[inside], sy[inside])
    return out, bad


def _wkt(rep, series, rownum, bad):
    raw = series.to_numpy(dtype=object)
    out = np.full(len(raw), None, dtype=object)
    for i, v in enumerate(raw):
        if _is_blank(v):
            continue
        try:
            out[i] = shapely.from_wkt(str(v))
        except shapely.errors.GEOSException as e:
            rep.add(int(rownum[i]), "wkt", v, f"not WKT: {e}")
            bad[i] = True
    return out


def _check_shapes(rep, spec, g, has, rownum, bad):
    """Empty geometries and types the layer does not take."""
    if not len(g):
        return
    empty = shapely.is_empty(g)
    for j in np.flatnonzero(empty):
        rep.add(int(rownum[has[j]]), "geometry", None, "geometry is empty")
        bad[has[j]] = True
    names = np.array(["Point", "LineString", "LinearRing", "Polygon", "MultiPoint", "MultiLineString",
                      "MultiPolygon", "GeometryCollection"])
    types = names[np.clip(shapely.get_type_id(g), 0, 7)]
    for j in np.flatnonzero(~empty & ~np.isin(types, spec.geometry)):
        t = str(types[j])
        rep.add(int(rownum[has[j]]), "geometry", t,
                f"geometry type {t} not allowed for {spec.name}; allowed: {', '.join(spec.geometry)}")
        bad[has[j]] = True


_OUT_OF_RANGE = ("coordinates outside lon/lat range after conversion to EPSG:4326: projected coordinates "
                 "without --crs, or lat/lon swapped?")
_NOT_FINITE = "coordinates contain NaN or infinity"


def _ranges_and_validity(rep, spec, g, idx, rownum, bad, make_valid):
    coords_ok = np.ones(len(g), dtype=bool)
    bounds = shapely.bounds(g)
    finite = np.isfinite(bounds).all(axis=1)
    inside = finite & (bounds[:, 0] >= -180) & (bounds[:, 2] <= 180) & (bounds[:, 1] >= -90) & (bounds[:, 3] <= 90)
    for j in np.flatnonzero(~inside):
        b = bounds[j]
        rep.add(int(rownum[idx[j]]), "geometry", f"x {b[0]:.6g}..{b[2]:.6g}, y {b[1]:.6g}..{b[3]:.6g}",
                _OUT_OF_RANGE if finite[j] else _NOT_FINITE)
        bad[idx[j]] = True
        coords_ok[j] = False
    valid = shapely.is_valid(g) | ~coords_ok
    for j in np.flatnonzero(~valid):
        reason = shapely.is_valid_reason(g[j])
        if make_valid:
            fixed = _repair(g[j], spec)
            if fixed is not None:
                g[j] = fixed
                rep.notes.append(f"row {int(rownum[idx[j]])}: geometry repaired ({reason})")
                continue
            rep.add(int(rownum[idx[j]]), "geometry", None, f"invalid geometry that --make-valid cannot repair: {reason}")
        else:
            rep.add(int(rownum[idx[j]]), "geometry", None, f"invalid geometry: {reason} (--make-valid repairs it)")
        bad[idx[j]] = True
    if spec.name in ("admin_area", "grid"):          # their tables take MultiPolygon only
        single = np.flatnonzero(shapely.get_type_id(g) == 3)
        for j in single:
            g[j] = shapely.MultiPolygon([g[j]])
    return g


def _repair(geom, spec):
    fixed = shapely.make_valid(geom)
    polys = [p for p in shapely.get_parts(fixed) if p.geom_type in ("Polygon", "MultiPolygon")]
    if "Polygon" in spec.geometry and polys:
        parts = [q for p in polys for q in (p.geoms if p.geom_type == "MultiPolygon" else [p])]
        return parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)
    lines = [p for p in shapely.get_parts(fixed) if p.geom_type in ("LineString", "MultiLineString")]
    if "LineString" in spec.geometry and lines:
        return shapely.line_merge(shapely.union_all(lines))
    return None


def district_boundary(session: Session):
    """The configured district: the union of the district admin areas that have a boundary
    (EPSG:4326), or None when none is loaded."""
    wkb = session.execute(text("SELECT ST_AsBinary(ST_Union(geom)) FROM admin_area "
                               "WHERE level = 'district' AND geom IS NOT NULL")).scalar()
    return None if wkb is None else shapely.from_wkb(bytes(wkb))


_UNREAD = object()


def _extent(rep, session, spec, geoms, rownum, values, *, district=_UNREAD) -> np.ndarray:
    bad = np.zeros(len(geoms), dtype=bool)
    district = district_boundary(session) if district is _UNREAD else district
    if district is None:
        rep.notes.append("no district boundary is loaded: the extent was not checked")
        return bad
    idx = np.flatnonzero(~shapely.is_missing(geoms))
    if spec.name == "admin_area" and "code" in values:
        # the district itself defines the extent
        idx = np.array([i for i in idx if not str(values["code"][i] or "").endswith("000000")], dtype=int)
    if not len(idx):
        return bad
    zone = shapely.buffer(district, EXTENT_TOLERANCE)
    shapely.prepare(zone)
    inside = _covered(geoms[idx], zone)
    if inside.all():
        return bad
    out_idx = idx[~inside]
    pts = shapely.point_on_surface(geoms[out_idx])
    x, y = shapely.get_x(pts), shapely.get_y(pts)
    hints = {}
    if rep.crs in ("EPSG:4326", "EPSG:4490"):
        for label, (hx, hy) in (("lat/lon swapped", (y, x)),
                                ("the coordinates look like GCJ-02 (--crs gcj02)", crs_mod.gcj02_to_wgs84(x, y)),
                                ("the coordinates look like BD-09 (--crs bd09)", crs_mod.bd09_to_wgs84(x, y))):
            hints[label] = shapely.contains_xy(zone, hx, hy)
    xmin, ymin, xmax, ymax = district.bounds
    for k, i in enumerate(out_idx):
        why = [label for label, hit in hints.items() if hit[k]]
        rep.add(int(rownum[i]), "geometry", f"{x[k]:.6f}, {y[k]:.6f}",
                f"outside the district (lon {xmin:.4f}..{xmax:.4f}, lat {ymin:.4f}..{ymax:.4f})"
                + (f"; {why[0]}?" if why else ""))
        bad[i] = True
    return bad


def _covered(g, zone) -> np.ndarray:
    """``shapely.covered_by(g, zone)`` for a prepared ``zone``. A point is covered exactly when
    it intersects the zone, and ``intersects_xy`` tests coordinates against the prepared zone
    without a predicate call per geometry object (50x faster for a million points)."""
    points = shapely.get_type_id(g) == 0
    if not points.all():
        return shapely.covered_by(g, zone)
    return shapely.intersects_xy(zone, shapely.get_x(g), shapely.get_y(g))


def _within(rep, area, geoms, rownum, already) -> np.ndarray:
    bad = np.zeros(len(geoms), dtype=bool)
    idx = np.flatnonzero(~shapely.is_missing(geoms) & ~already)
    if not len(idx):
        return bad
    zone = shapely.buffer(area, EXTENT_TOLERANCE)
    shapely.prepare(zone)
    outside = idx[~_covered(geoms[idx], zone)]
    for i in outside:
        rep.add(int(rownum[i]), "geometry", None, "outside your jurisdiction")
    bad[outside] = True
    return bad


# -- codes and references -------------------------------------------------------------------------
def _duplicates(rep, codes, rownum) -> np.ndarray:
    s = pd.Series(codes, dtype=object)
    dup = s.duplicated(keep=False).to_numpy() & s.notna().to_numpy()
    bad = np.zeros(len(s), dtype=bool)
    if dup.any():
        groups = pd.Series(rownum[dup]).groupby(s[dup].to_numpy()).apply(list)
        for code, rows in groups.items():
            for r in rows:
                others = ", ".join(str(o) for o in rows if o != r)
                rep.add(int(r), "code", code, f"code appears more than once in the file (also on rows {others})")
        bad[dup] = True
    return bad


def _existing(session, table: str, column: str, wanted, extra: str = "") -> set:
    """Which of the ``wanted`` values ``table.column`` holds (a large set goes by COPY into a
    temporary table: binding a million-element array costs more than the lookup)."""
    wanted = pd.unique(pd.Series(wanted, dtype=object).dropna().astype(str).to_numpy(dtype=object))
    if not len(wanted):
        return set()
    if len(wanted) <= 10_000:
        wanted = sorted(wanted)
        rows = session.execute(text(f"SELECT {column} FROM {table} WHERE {column} = ANY(:v) {extra}"), {"v": wanted})
        return {r[0] for r in rows}
    session.execute(text("DROP TABLE IF EXISTS _gisgrid_wanted"))
    session.execute(text("CREATE TEMP TABLE _gisgrid_wanted (v text) ON COMMIT DROP"))
    esc = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
    raw = session.connection().connection.driver_connection
    lines = "\n".join(wanted)
    if lines.count("\n") != len(wanted) - 1 or any(c in lines for c in "\\\t\r"):     # escape only then
        lines = "\n".join(v.translate(esc) for v in wanted)
    with raw.cursor() as cur, cur.copy("COPY _gisgrid_wanted (v) FROM STDIN") as cp:
        cp.write(lines + "\n")
    rows = session.execute(text(f"SELECT t.{column} FROM {table} t JOIN _gisgrid_wanted w ON w.v = t.{column} "
                                f"WHERE true {extra}"))
    found = {r[0] for r in rows}
    session.execute(text("DROP TABLE _gisgrid_wanted"))
    return found


def _references(rep, session, spec, values, rownum, mode) -> np.ndarray:
    codes = values["code"]
    n = len(codes)
    bad = np.zeros(n, dtype=bool)

    def refuse(mask, field_, vals, reason):
        for i in np.flatnonzero(mask):
            rep.add(int(rownum[i]), field_, vals[i], reason)
        bad[mask] = True

    current = " AND valid_to IS NULL" if spec.name == "grid" else ""
    if mode == "insert":
        stored = _existing(session, spec.name, "code", codes, current)
        refuse(np.isin(codes.astype(str), list(stored)) & (codes != None), "code", codes,  # noqa: E711
               "code already in the database (use --mode upsert to update it)")
    if spec.name == "admin_area":
        from gisgrid.layers import admin_areas
        from gisgrid.layers.admin_areas import level_of

        levels = np.full(n, None, dtype=object)
        for i, c in enumerate(codes):
            try:
                levels[i] = level_of(c) if c is not None else None
            except InvalidInput:
                refuse(np.arange(n) == i, "code", codes, "admin code must be 12 digits (district 6 + street 3 + "
                                                        "community 3)")
        parents = values.get("parent_code")
        implied = np.array([None if l in (None, "district") else (c[:9] + "000" if l == "community" else c[:6] + "000000")
                            for c, l in zip(codes, levels)], dtype=object)
        if parents is not None:
            implied = np.where(np.array([p is not None for p in parents]), parents, implied)
        values["parent_code"] = implied
        values["level"] = levels
        chains = [admin_areas.chain(c) if l else {} for c, l in zip(codes, levels)]
        for k in ("district_code", "street_code", "community_code"):
            values[k] = np.array([ch.get(k) for ch in chains], dtype=object)
        known = _existing(session, "admin_area", "code", implied) | {c for c in codes if c is not None}
        missing = np.array([p is not None and p not in known for p in implied], dtype=bool) & ~bad
        refuse(missing, "parent_code", implied, "parent admin area is neither in the database nor in the file")
    elif spec.name == "grid":
        community = np.array([c[:12] if c else None for c in codes], dtype=object)
        rows = session.execute(text("SELECT code, street_code, district_code, kind FROM admin_area "
                                    "WHERE level = 'community' AND code = ANY(:c)"),
                               {"c": sorted({c for c in community if c})}).all()
        found = {r.code: r for r in rows}
        wrong = np.array([c is not None and not re.fullmatch(r"\d{15,20}", c) for c in codes], dtype=bool) & ~bad
        refuse(wrong, "code", codes, "grid code must be its community's 12 digits and a serial of 3 or more digits")
        unknown = np.array([c is not None and c not in found for c in community], dtype=bool) & ~bad
        refuse(unknown, "code", codes, "community (the code's first 12 digits) is not in the database")
        values["community_code"] = community
        values["street_code"] = np.array([found[c].street_code if c in found else None for c in community], dtype=object)
        values["district_code"] = np.array([found[c].district_code if c in found else None for c in community],
                                           dtype=object)
        if "kind" in values:
            values["kind"] = np.array([k if k is not None else (found[c].kind if c in found else None)
                                       for k, c in zip(values["kind"], community)], dtype=object)
        else:
            values["kind"] = np.array([found[c].kind if c in found else None for c in community], dtype=object)
    elif spec.name == "resident" and "building_code" in values:
        b = values["building_code"]
        known = _existing(session, "building", "code", b)
        refuse(np.array([v is not None and v not in known for v in b], dtype=bool) & ~bad, "building_code", b,
               "building is not in the database")
    elif spec.name == "incident" and "category" in values:
        from gisgrid.layers import incidents

        cats = {c["code"] for c in incidents.categories(session)}
        c = values["category"]
        refuse(np.array([v is not None and v not in cats for v in c], dtype=bool) & ~bad, "category", c,
               f"unknown category; categories: {', '.join(sorted(cats))}")
    return bad


def _personal(rep, values, rownum, geoms) -> np.ndarray:
    n = len(rownum)
    bad = np.zeros(n, dtype=bool)
    building = values.get("building_code", np.full(n, None, dtype=object))
    nowhere = pd.isna(pd.Series(building, dtype=object)).to_numpy() & (
        np.ones(n, dtype=bool) if geoms is None else shapely.is_missing(geoms))
    for i in np.flatnonzero(nowhere):
        rep.add(int(rownum[i]), "building_code", None,
                "a resident needs a building (building_code) or a point (lon/lat)")
    bad |= nowhere
    for name, check in (("id_number", pii.check_id_number), ("phone", pii.check_phone)):
        col = values.get(name)
        if col is None:
            continue
        for i, v in enumerate(col):
            if v is None:
                continue
            try:
                col[i] = check(v)
            except InvalidInput as e:
                rep.add(int(rownum[i]), name, v, e.message)
                bad[i] = True
    return bad
