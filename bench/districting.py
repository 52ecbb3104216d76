"""Proposals (gisgrid.spatial.districting) beside GerryChain, PySAL spopt MaxP and pymetis on the
same building graphs, in the same run.

Instances: every community of the demo district (generated in memory, no database), and with
the full run two generated communities of 1,000 and 5,000 buildings (households heavy-tailed,
mean about 61; roads on a lattice, every fourth one major). Each instance has "current grids"
(a household-weighted recursive bisection of the buildings before 15 % of them grew, as
estates do), so ``--keep-current`` has something to keep and every method's "households
moved" can be counted.

The graph is gisgrid's: one node per building anchor, adjacent when their Voronoi cells inside
the road blocks share an edge (``districting.blocks`` / ``unit_cells`` / ``adjacency``); every
method partitions that same graph into k = round(households / target) parts:

* gisgrid: ``districting.partition`` (and with ``current``: keep-current);
* GerryChain 1.0 ``recursive_tree_part`` (epsilon = tolerance), in a child process with a budget;
* spopt ``MaxPHeuristic`` (threshold = target × (1 − tolerance)), same budget;
* pymetis ``part_graph`` (vertex weights = households).

Per method: wall time, parts, empty parts, share of parts within tolerance (parts that are one
oversized building counted apart), max and mean |deviation|, share contiguous, mean Polsby-Popper
of the dissolved Voronoi cells (metric CRS), households moved versus the current grids (each part
keeps the current grid code holding most of its households, each code once).

    .venv/bin/python bench/districting.py --quick          # demo communities, a few minutes
    .venv/bin/python bench/districting.py [--budget 600]   # + 1,000 and 5,000 buildings
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass

import networkx as nx
import numpy as np
import shapely

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from gisgrid.spatial import districting  # noqa: E402
from gisgrid.spatial.coverage import polsby_popper  # noqa: E402

METHODS = ("gisgrid", "gisgrid_keep", "gerrychain", "maxp", "pymetis")


@dataclass
class Instance:
    name: str
    scope: object
    points: np.ndarray
    households: np.ndarray
    roads: np.ndarray
    major: np.ndarray
    current: np.ndarray


# -- instances ----------------------------------------------------------------------------------
def demo_instances(seed: int) -> list[Instance]:
    import pyproj

    from gisgrid import generate

    if not (os.environ.get("GISGRID_PII_KEY") or os.environ.get("GISGRID_PII_KEY_FILE")):
        from cryptography.fernet import Fernet
        os.environ["GISGRID_PII_KEY"] = Fernet.generate_key().decode()
    frames = generate.build("demo", seed=seed)
    admin, grid, building, road = frames["admin_area"], frames["grid"], frames["building"], frames["road"]
    geo = lambda s: shapely.from_wkb(np.array([bytes.fromhex(h) for h in s], dtype=object))  # noqa: E731
    comm = admin[admin.level == "community"]
    comm = comm[comm.geom.notna() & comm.code.isin(grid.community_code)]
    comm_geoms, grid_geoms = geo(comm.geom), geo(grid.geom)
    anchors = shapely.point_on_surface(geo(building.geom))
    road_geoms, major_mask = geo(road.geom), (road.kind == "primary").to_numpy()
    lon = shapely.get_coordinates(comm_geoms[0])[0, 0]
    from gisgrid.spatial.crs import gk_zone_for
    tr = pyproj.Transformer.from_crs("EPSG:4326", gk_zone_for(lon), always_xy=True)
    fwd = lambda g: shapely.transform(g, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))  # noqa: E731
    hh_all = building.households.to_numpy()
    # the grid holding each anchor (lowest code on an edge)
    bi, gi = shapely.STRtree(grid_geoms).query(anchors, predicate="intersects")
    order = np.lexsort((gi, bi))
    bi, gi = bi[order], gi[order]
    first = np.r_[True, bi[1:] != bi[:-1]]
    grid_of = np.full(len(anchors), -1)
    grid_of[bi[first]] = gi[first]
    out = []
    for code, g in zip(comm.code, comm_geoms):
        sel = shapely.intersects(g, anchors)
        rsel = shapely.intersects(g, road_geoms)
        scope = fwd(shapely.segmentize(g, 0.0002))
        roads = shapely.intersection(fwd(road_geoms[rsel]), scope)
        out.append(Instance(f"demo {code}", scope, fwd(anchors[sel]), hh_all[sel], roads,
                            roads[major_mask[rsel]], grid_of[sel]))
    return out


def weighted_bisection(xy: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """Labels of k parts by recursive bisection at the weighted median of the longer axis."""
    labels = np.zeros(len(xy), dtype=np.int64)

    def split(idx, first, k):
        if k == 1 or len(idx) <= 1:
            labels[idx] = first
            return
        k1 = k // 2
        span = xy[idx].max(axis=0) - xy[idx].min(axis=0)
        axis = int(np.argmax(span))
        idx = idx[np.argsort(xy[idx, axis], kind="stable")]
        cum = np.cumsum(w[idx])
        cut = int(np.searchsorted(cum, cum[-1] * k1 / k)) + 1
        cut = min(max(cut, 1), len(idx) - 1)
        split(idx[:cut], first, k1)
        split(idx[cut:], first + k1, k - k1)
    split(np.arange(len(xy)), 0, k)
    return labels


def generated_instance(n: int, seed: int, target: int) -> Instance:
    rng = np.random.default_rng(seed)
    hh = np.maximum(1, np.round((rng.pareto(2.2, n) + 0.5) * 40)).astype(np.int64)   # mean ≈ 61, heavy tail
    side = 28.0 * np.sqrt(n)
    step = side / max(2, round(side / 180))           # blocks of about 180 m
    lines = np.arange(step, side - 1e-6, step)
    roads = [shapely.LineString([(x, 0), (x, side)]) for x in lines] + \
            [shapely.LineString([(0, y), (side, y)]) for y in lines]
    major = [r for i, r in enumerate(roads) if i % 4 == 1]
    xy = rng.uniform(0, side, (n, 2))
    current = weighted_bisection(xy, hh.astype(float), max(1, round(hh.sum() / target)))
    grown = hh.copy()
    estates = rng.random(n) < 0.15
    grown[estates] = np.round(grown[estates] * rng.uniform(1.5, 3.0, estates.sum())).astype(np.int64)
    return Instance(f"generated {n}", shapely.box(0, 0, side, side), shapely.points(xy), grown,
                    np.asarray(roads, dtype=object), np.asarray(major, dtype=object), current)


# -- the shared graph ---------------------------------------------------------------------------
def building_graph(inst: Instance):
    """Unit cells (one per building anchor, duplicates nudged apart) and the weighted graph."""
    xy = shapely.get_coordinates(inst.points)
    _, first = np.unique(np.round(xy, 2), axis=0, return_index=True)
    dup = np.setdiff1d(np.arange(len(xy)), first)
    xy = xy.copy()
    xy[dup] += np.random.default_rng(0).uniform(-0.05, 0.05, (len(dup), 2))
    pts = shapely.points(xy)
    blk = districting.blocks(inst.scope, inst.roads)
    cells, block_of, _ = districting.unit_cells(blk, pts)
    sup = districting._superblock_of(inst.scope, inst.major, blk)

    def crossing(a, b):
        cost = np.ones(len(a))
        cost[block_of[a] != block_of[b]] = districting.MINOR_ROAD_COST
        cost[sup[block_of[a]] != sup[block_of[b]]] = districting.MAJOR_ROAD_COST
        return cost
    return cells, districting.adjacency(cells, pts, crossing)


# -- methods ------------------------------------------------------------------------------------
def run_gerrychain(g, pop, k, target, tol):
    from gerrychain import Graph
    from gerrychain.partition import recursive_tree_part

    h = nx.Graph()
    h.add_nodes_from((u, {"pop": int(pop[u])}) for u in g.nodes)
    h.add_edges_from(g.edges)
    a = recursive_tree_part(Graph.from_networkx(h), range(k), pop.sum() / k, "pop", tol, rng=0)
    return np.asarray([a[u] for u in range(len(pop))])


def run_maxp(g, pop, k, target, tol, xy):
    import geopandas as gpd
    import libpysal
    from spopt.region import MaxPHeuristic

    df = gpd.GeoDataFrame({"pop": pop.astype(float), "x": xy[:, 0], "y": xy[:, 1]},
                          geometry=shapely.points(xy))
    w = libpysal.weights.W({u: list(g.neighbors(u)) for u in g.nodes}, silence_warnings=True)
    m = MaxPHeuristic(df, w, ["x", "y"], "pop", target * (1 - tol), top_n=2)
    m.solve()
    _, labels = np.unique(np.asarray(m.labels_), return_inverse=True)
    return labels


def run_pymetis(g, pop, k, target, tol):
    import pymetis

    adj = [sorted(g.neighbors(u)) for u in range(len(pop))]
    _, membership = pymetis.part_graph(k, adjacency=adj, vweights=[int(p) for p in pop])
    return np.asarray(membership)


def _child(conn, fn, args):
    try:
        t0 = time.perf_counter()
        labels = fn(*args)
        conn.send(("ok", labels, time.perf_counter() - t0))
    except Exception as e:        # an anchor failing is a result to print, not a crash
        conn.send(("error", f"{type(e).__name__}: {e}", 0.0))
    conn.close()


def with_budget(fn, args, budget):
    """(labels or None, seconds, note): ``fn(*args)`` in a forked child, killed after ``budget``."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    t0 = time.perf_counter()
    proc = ctx.Process(target=_child, args=(child, fn, args))
    proc.start()
    child.close()
    if parent.poll(budget):
        status, value, took = parent.recv()
        proc.join()
        return (value, took, "") if status == "ok" else (None, time.perf_counter() - t0, value[:60])
    proc.kill()
    proc.join()
    return None, budget, f"no answer in {budget:g} s"


# -- measures -----------------------------------------------------------------------------------
def measure(name, labels, seconds, note, inst, cells, g, target, tol):
    if labels is None:
        return {"method": name, "seconds": seconds, "note": note}
    pop = inst.households
    k = int(labels.max()) + 1
    part_pop = np.bincount(labels, weights=pop, minlength=k)
    present = np.bincount(labels, minlength=k) > 0
    empty = int((~present).sum() + ((part_pop == 0) & present).sum())
    parts = np.flatnonzero(present)
    lo, hi = target * (1 - tol), target * (1 + tol)
    oversized = np.asarray([pop[labels == q].max() > hi and (labels == q).sum() == 1 for q in parts])
    within = (part_pop[parts] >= lo) & (part_pop[parts] <= hi)
    regular = ~oversized
    dev = np.abs(part_pop[parts] / target - 1)
    contiguous = np.asarray([nx.is_connected(g.subgraph(np.flatnonzero(labels == q).tolist())) for q in parts])
    geoms = np.asarray([shapely.union_all(cells[labels == q]) for q in parts], dtype=object)
    pp = polsby_popper(geoms)
    return {"method": name, "seconds": seconds, "note": note, "parts": len(parts), "empty": empty,
            "oversized": int(oversized.sum()),
            "within": float(within[regular].mean()) if regular.any() else 1.0,
            "max_dev": float(dev[regular].max()) if regular.any() else 0.0,
            "mean_dev": float(dev[regular].mean()) if regular.any() else 0.0,
            "contiguous": float(contiguous.mean()), "pp": float(pp.mean()),
            "moved": moved(labels, inst.current, pop)}


def moved(labels, current, pop) -> int:
    """Households whose part does not keep their current grid's code (greedy matching)."""
    overlap = {}
    for q, c, h in zip(labels, current, pop):
        overlap[(q, c)] = overlap.get((q, c), 0) + h
    code, used = {}, set()
    for (q, c), _ in sorted(overlap.items(), key=lambda kv: -kv[1]):
        if q not in code and c not in used and c >= 0:
            code[q] = c
            used.add(c)
    return int(sum(h for q, c, h in zip(labels, current, pop) if code.get(q) != c))


def run_instance(inst: Instance, target: int, tol: float, budget: float) -> list[dict]:
    cells, g = building_graph(inst)
    pop = inst.households
    k = max(1, int(round(pop.sum() / target)))
    xy = shapely.get_coordinates(inst.points)
    rows = []
    t0 = time.perf_counter()
    labels = districting.partition(g, pop, target, tol)
    rows.append(measure("gisgrid", labels, time.perf_counter() - t0, "", inst, cells, g, target, tol))
    t0 = time.perf_counter()
    labels = districting.partition(g, pop, target, tol, current=inst.current)
    rows.append(measure("gisgrid_keep", labels, time.perf_counter() - t0, "keep-current", inst, cells, g, target, tol))
    t0 = time.perf_counter()
    districting.propose(inst.scope, inst.points, pop, inst.roads, inst.major, target=target, tolerance=tol)
    rows[0]["note"] = f"end to end {time.perf_counter() - t0:.2f} s"
    for name, fn, args in (("gerrychain", run_gerrychain, (g, pop, k, target, tol)),
                           ("maxp", run_maxp, (g, pop, k, target, tol, xy)),
                           ("pymetis", run_pymetis, (g, pop, k, target, tol))):
        labels, took, note = with_budget(fn, args, budget)
        rows.append(measure(name, labels, took, note, inst, cells, g, target, tol))
    for r in rows:
        r.update(instance=inst.name, buildings=len(pop), households=int(pop.sum()), k=k)
    return rows


# -- report -------------------------------------------------------------------------------------
def fmt(r) -> str:
    if "parts" not in r:
        return f"{r['instance']:<22} {r['method']:<13} {r['seconds']:>8.2f}  {r['note']}"
    return (f"{r['instance']:<22} {r['method']:<13} {r['seconds']:>8.2f} {r['parts']:>6} {r['empty']:>5} "
            f"{r['oversized']:>5} {r['within']:>7.1%} {r['max_dev']:>7.1%} {r['mean_dev']:>7.1%} "
            f"{r['contiguous']:>7.1%} {r['pp']:>6.3f} {r['moved']:>8}  {r['note']}")


def summary(rows: list[dict]) -> dict:
    out = {}
    for m in METHODS:
        mine = [r for r in rows if r["method"] == m]
        done = [r for r in mine if "parts" in r]
        parts = sum(r["parts"] for r in done)
        regular = sum(r["parts"] - r["oversized"] for r in done)
        out[m] = {"answered": f"{len(done)}/{len(mine)}", "seconds": sum(r["seconds"] for r in mine),
                  "parts": parts, "empty": sum(r["empty"] for r in done),
                  "within": sum(r["within"] * (r["parts"] - r["oversized"]) for r in done) / regular if regular else 0,
                  "contiguous": sum(r["contiguous"] * r["parts"] for r in done) / parts if parts else 0,
                  "pp": sum(r["pp"] * r["parts"] for r in done) / parts if parts else 0,
                  "moved": sum(r["moved"] for r in done), "mean_dev": max((r["mean_dev"] for r in done), default=0)}
    return out


def anchor_moved(rows: list[dict]) -> dict[str, int]:
    """Households each anchor moved, over the instances it answered."""
    return {m: sum(r["moved"] for r in rows if r["method"] == m and "parts" in r)
            for m in ("gerrychain", "maxp", "pymetis") if any(r["method"] == m and "parts" in r for r in rows)}


def keep_moved_on(rows: list[dict], anchor: str) -> int:
    """Households gisgrid's keep-current moved over the instances ``anchor`` answered."""
    answered = {r["instance"] for r in rows if r["method"] == anchor and "parts" in r}
    return sum(r["moved"] for r in rows if r["method"] == "gisgrid_keep" and r["instance"] in answered)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the demo district's communities only")
    ap.add_argument("--budget", type=float, help="seconds per anchor run on the generated communities (default 600)")
    ap.add_argument("--demo-budget", type=float, default=10.0, help="seconds per anchor run on a demo community")
    ap.add_argument("--target", type=int, default=250)
    ap.add_argument("--tolerance", type=float, default=0.10)
    ap.add_argument("--seed", type=int, default=20261122)
    ap.add_argument("--sizes", default="1000,5000", help="generated community sizes (full run)")
    a = ap.parse_args(argv)
    budget = a.budget or 600.0
    insts = demo_instances(a.seed)
    if not a.quick:
        insts += [generated_instance(int(n), a.seed + int(n), a.target) for n in a.sizes.split(",")]
    print(f"target {a.target} households, tolerance ±{a.tolerance:.0%}, anchor budget {budget:g} s "
          f"({a.demo_budget:g} s on demo communities), "
          f"{len(insts)} instances, {os.cpu_count()} cores")
    print(f"{'instance':<22} {'method':<13} {'seconds':>8} {'parts':>6} {'empty':>5} {'big':>5} {'within':>7} "
          f"{'maxdev':>7} {'meandev':>7} {'contig':>7} {'PP':>6} {'moved':>8}  note")
    rows = []
    for inst in insts:
        for r in run_instance(inst, a.target, a.tolerance, a.demo_budget if inst.name.startswith("demo") else budget):
            rows.append(r)
            print(fmt(r), flush=True)
    s = summary(rows)
    print("\nsummary (parts-weighted over instances; 'within' counts parts that are one oversized building apart)")
    for m, v in s.items():
        print(f"  {m:<13} answered {v['answered']:>6}  {v['seconds']:>9.2f} s  parts {v['parts']:>6}  empty {v['empty']:>4}"
              f"  within {v['within']:>6.1%}  contiguous {v['contiguous']:>6.1%}  PP {v['pp']:.3f}  moved {v['moved']:>8}")
    ours, keep = s["gisgrid"], s["gisgrid_keep"]
    anchors = {m: s[m] for m in ("gerrychain", "maxp", "pymetis")}
    best_pp = max((v["pp"] for v in anchors.values() if v["parts"]), default=0)
    goals = [("100% contiguous", ours["contiguous"] == 1.0),
             ("no empty part", ours["empty"] == 0),
             ("≥ 95% of parts within tolerance where units allow", ours["within"] >= 0.95),
             (f"compactness ≥ best anchor's ({best_pp:.3f})", ours["pp"] >= best_pp),
             ("keep-current moves fewer households than any anchor (on the instances it answered)",
              all(keep_moved_on(rows, m) < v for m, v in anchor_moved(rows).items()))]
    big = [r for r in rows if r["instance"] == "generated 5000"]
    if big:
        t_ours = next(r["seconds"] for r in big if r["method"] == "gisgrid")
        r_maxp = next(r for r in big if r["method"] == "maxp")
        at_least = "" if "parts" in r_maxp else " (MaxP hit the budget: at least)"
        goals.append((f"≥ 20× faster than MaxP on 5,000 buildings: {r_maxp['seconds'] / t_ours:.1f}×{at_least}",
                      r_maxp["seconds"] / t_ours >= 20))
    for text_, ok in goals:
        print(f"  goal: {text_}: {'met' if ok else 'NOT met'}")
    print("totals: " + " | ".join(f"{m} {v['answered']} {v['seconds']:.1f}s within {v['within']:.1%} "
                                  f"contig {v['contiguous']:.1%} PP {v['pp']:.3f} moved {v['moved']}"
                                  for m, v in s.items()))


if __name__ == "__main__":
    main()
