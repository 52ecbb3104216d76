"""Proposals: cut a community into grids of about ``target`` households (pure geometry, metric CRS).

The units are buildings (indivisible). The algorithm is a graph partition with an explicit
balance tolerance, in the family of GerryChain's spanning-tree recursive bisection and PySAL
spopt's region growing with local search, shaped for what grids are: a grid of 250 households
holds only a handful of buildings, so a random spanning tree rarely has an edge that cuts a part
within ±10 % (GerryChain then resamples for ever). Here:

1. **Blocks and unit cells.** The scope is cut into blocks by the roads
   (:func:`shapely.polygonize`); inside each block, each unit (the buildings sharing an anchor
   point) gets its Voronoi cell clipped to the block. Unit cells cover the scope exactly, so any
   union of them does too, and boundaries between blocks follow the roads.
2. **Graph.** Units are adjacent when their cells share an edge (networkx). An edge that crosses
   a minor road costs ``MINOR_ROAD_COST`` times its length, one that crosses a major road
   ``MAJOR_ROAD_COST`` times: roads are barriers a part crosses only when the units demand it.
3. **Recursive tree bisection.** For a connected set of units that should make ``k`` parts,
   draw ``attempts`` minimum spanning trees (scipy; weights jittered by ``rng`` after the first),
   and cut the tree edge whose subtree holds closest to ``j/k`` of the households for some
   ``j``; recurse on both sides with ``j`` and ``k - j`` parts. Always answers: the best edge of
   the trees is taken, not a random one within tolerance.
4. **Local search.** Boundary units move between neighbouring parts while that lowers the
   households outside tolerance, never breaking a part in two (as AZP does).
5. **Keep current** (``current``): start from today's grids instead of step 3, and only split
   parts far above target, dissolve stray pieces and run step 4, so few households change grid.

Buildings with more households than ``target × (1 + tolerance)`` are parts of their own; every
part outside tolerance is named in :attr:`Proposal.exceptions` with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import shapely

MINOR_ROAD_COST = 3.0
MAJOR_ROAD_COST = 30.0


class ProposalError(ValueError):
    """The inputs cannot make a proposal (no scope area, a negative household count…)."""


@dataclass
class Proposal:
    """A partition of the scope's buildings and area.

    Attributes
    ----------
    labels : ndarray of int, one per building (the part it falls in, ``0..n_parts-1``)
    geoms : ndarray of shapely Polygon/MultiPolygon, one per part (metric CRS), covering the scope
    households : ndarray of int, households per part
    exceptions : list of dict, one per part outside tolerance: ``part``, ``households``,
        ``deviation``, ``reason`` (``oversized_building``, ``units_too_coarse``, ``isolated``)
    """
    labels: np.ndarray
    geoms: np.ndarray
    households: np.ndarray
    exceptions: list[dict] = field(default_factory=list)

    @property
    def n_parts(self) -> int:
        return len(self.geoms)


# -- 1. blocks and unit cells -----------------------------------------------------------------
def blocks(scope, roads) -> np.ndarray:
    """The scope cut by the road lines into polygons (blocks). Dangling road ends cut nothing.

    Parameters
    ----------
    scope : shapely Polygon or MultiPolygon (metric CRS)
    roads : array-like of shapely LineString/MultiLineString (same CRS), may be empty
    """
    roads = [r for r in np.asarray(roads, dtype=object).ravel() if r is not None and not r.is_empty]
    if not roads:
        return np.asarray(shapely.get_parts(scope), dtype=object)
    inside = shapely.intersection(np.asarray(roads, dtype=object), scope)
    lines = shapely.union_all(np.concatenate([[scope.boundary], inside]))
    polys = shapely.get_parts(shapely.polygonize(shapely.get_parts(lines)))
    keep = shapely.contains(scope, shapely.point_on_surface(polys))
    out = polys[keep]
    if abs(shapely.area(out).sum() - scope.area) > 1e-6 * scope.area:   # roads that polygonize badly
        return np.asarray(shapely.get_parts(scope), dtype=object)
    return out


def unit_cells(block_geoms: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voronoi cells of ``points`` inside their blocks.

    Returns ``(cells, block_of_point, empty_blocks)``: one cell per point (clipped to the block
    holding the point), the block index of each point, and the indices of blocks with no point.
    Points must be distinct.
    """
    tree = shapely.STRtree(block_geoms)
    pi, bi = tree.query(points, predicate="intersects")
    block_of = np.full(len(points), -1)
    # a point on a shared road line: the first block wins (any is fine, both are adjacent)
    order = np.lexsort((bi, pi))
    pi, bi = pi[order], bi[order]
    first = np.r_[True, pi[1:] != pi[:-1]]
    block_of[pi[first]] = bi[first]
    if (block_of < 0).any():
        # outside every block (a building on the scope's edge): the nearest block
        lost = np.flatnonzero(block_of < 0)
        block_of[lost] = tree.nearest(points[lost])
    cells = np.empty(len(points), dtype=object)
    for b in np.unique(block_of):
        idx = np.flatnonzero(block_of == b)
        blk = block_geoms[b]
        if len(idx) == 1:
            cells[idx[0]] = blk
            continue
        vor = shapely.get_parts(shapely.voronoi_polygons(shapely.multipoints(points[idx]), extend_to=blk,
                                                         ordered=True))
        cells[idx] = shapely.intersection(vor, blk)
    empty = np.setdiff1d(np.arange(len(block_geoms)), block_of)
    return cells, block_of, empty


# -- 2. graph ---------------------------------------------------------------------------------
def adjacency(cells: np.ndarray, points: np.ndarray, crossing: np.ndarray) -> nx.Graph:
    """Units adjacent when their cells share an edge longer than 1 cm; weight = anchor
    distance × the road cost of the edge. ``crossing[i, j]``-style costs come from
    ``crossing``, a function of the two units' block labels (array ``cost(a, b)``)."""
    tree = shapely.STRtree(cells)
    a, b = tree.query(cells, predicate="intersects")
    keep = a < b
    a, b = a[keep], b[keep]
    shared = shapely.length(shapely.intersection(shapely.boundary(cells[a]), shapely.boundary(cells[b])))
    keep = shared > 0.01
    a, b = a[keep], b[keep]
    dist = np.maximum(shapely.distance(points[a], points[b]), 0.01)
    g = nx.Graph()
    xy = shapely.get_coordinates(points)
    g.add_nodes_from((i, {"pos": (float(x), float(y))}) for i, (x, y) in enumerate(xy))
    g.add_weighted_edges_from(zip(a.tolist(), b.tolist(), (dist * crossing(a, b)).tolist()))
    return g


# -- 3. recursive tree bisection --------------------------------------------------------------
def _edge_arrays(g: nx.Graph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The graph's edges as arrays ``(a, b, weight)`` (read once; the cuts index into them)."""
    e = np.asarray([(u, v, d) for u, v, d in g.edges(data="weight")], dtype=float).reshape(-1, 3)
    return e[:, 0].astype(np.int64), e[:, 1].astype(np.int64), e[:, 2]


def _spanning_tree(n: int, rows: np.ndarray, cols: np.ndarray, w: np.ndarray) -> list[list[int]]:
    """Adjacency lists of a minimum spanning tree (Kruskal: edges by weight, union-find)."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    adj: list[list[int]] = [[] for _ in range(n)]
    joined = 0
    for e in np.argsort(w, kind="stable").tolist():
        u, v = int(rows[e]), int(cols[e])
        ru, rv = find(u), find(v)
        if ru != rv:
            parent[ru] = rv
            adj[u].append(v)
            adj[v].append(u)
            joined += 1
            if joined == n - 1:
                break
    return adj


def _tree_cut(edges, n_all: int, nodes: np.ndarray, pop: np.ndarray, k: int, rng: np.random.Generator,
              attempts: int, good: float, xy: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Best (side, j): a subtree ``side`` of a spanning tree of ``nodes`` holding closest to
    ``j/k`` of their households; among cuts off by less than ``good`` of a part, the one whose
    two sides spread least around their centres (``xy``) and near the middle of the tree; stops
    drawing trees once it has such a cut."""
    ea, eb, w = edges
    local = np.full(n_all, -1)
    local[nodes] = np.arange(len(nodes))
    keep = (local[ea] >= 0) & (local[eb] >= 0)
    rows, cols, w = local[ea[keep]], local[eb[keep]], w[keep]
    n = len(nodes)
    p = pop[nodes].astype(float).tolist()
    total = float(sum(p))
    # centred coordinates for the spread of each side (a compactness measure of a cut)
    c = xy[nodes] - xy[nodes].mean(axis=0) if xy is not None else np.zeros((n, 2))
    cx, cy, cr = c[:, 0].tolist(), c[:, 1].tolist(), (c ** 2).sum(axis=1).tolist()
    tot_x, tot_y, tot_r = sum(cx), sum(cy), sum(cr)
    best = (np.inf, None, 1)
    for attempt in range(attempts):
        ww = w if attempt == 0 else w * rng.uniform(0.5, 1.5, len(w))
        adj = _spanning_tree(n, rows, cols, ww)
        # depth-first order from node 0 with parents, then subtree sums bottom-up
        order, parent, seen = [0], [-1] * n, [False] * n
        seen[0] = True
        stack = [0]
        while stack:
            u = stack.pop()
            for v in adj[u]:
                if not seen[v]:
                    seen[v] = True
                    parent[v] = u
                    order.append(v)
                    stack.append(v)
        sub, sn, sx, sy, sr = p[:], [1.0] * n, cx[:], cy[:], cr[:]
        for v in reversed(order[1:]):
            u = parent[v]
            sub[u] += sub[v]
            sn[u] += sn[v]
            sx[u] += sx[v]
            sy[u] += sy[v]
            sr[u] += sr[v]
        cand = np.asarray(order[1:])
        share = (np.asarray(sub)[cand] * k / total) if total > 0 else np.arange(1, n) * k / n
        j = np.clip(np.rint(share), 1, k - 1)
        err = np.abs(share - j)
        # spread of both sides (moment of inertia / count², i.e. relative to a disc of the
        # same number of points): lower is more compact
        a_n, a_x, a_y, a_r = (np.asarray(v)[cand] for v in (sn, sx, sy, sr))
        b_n, b_x, b_y, b_r = n - a_n, tot_x - a_x, tot_y - a_y, tot_r - a_r
        spread = ((a_r - (a_x ** 2 + a_y ** 2) / a_n) / a_n ** 2 * j
                  + (b_r - (b_x ** 2 + b_y ** 2) / np.maximum(b_n, 1)) / np.maximum(b_n, 1) ** 2 * (k - j)) / k
        spread = spread / (spread.max() + 1e-12)
        # balance first; among cuts within ``good``, the most compact
        # (cuts far from the middle make the recursion deep, and slow: they pay for it)
        score = (np.where(err < good, 0.0, err) + good * spread
                 + 2 * good * np.maximum(0.0, np.abs(j - k / 2) - k / 4) / k)
        i = int(np.argmin(score))
        if score[i] < best[0]:
            best = (score[i], (order, parent, int(cand[i])), int(j[i]))
        if err[i] < good:
            break
    (order, parent, root), j = best[1], best[2]
    inside = [False] * n
    inside[root] = True
    for v in order:       # parents come before children in the order
        if v != root and parent[v] >= 0 and inside[parent[v]]:
            inside[v] = True
    return nodes[np.asarray(inside)], j


def tree_partition(g: nx.Graph, nodes, pop: np.ndarray, k: int, rng: np.random.Generator,
                   attempts: int = 8, edges=None, good: float = 0.05) -> list[np.ndarray]:
    """``nodes`` (connected in ``g``) cut into ``k`` connected parts of balanced households
    (a cut off by less than ``good`` of a part's households is taken at once)."""
    if edges is None:
        pos = nx.get_node_attributes(g, "pos")
        xy = np.asarray([pos[u] for u in range(g.number_of_nodes())]) if len(pos) == g.number_of_nodes() else None
        edges = (*_edge_arrays(g), xy)
    nodes = np.asarray(sorted(nodes), dtype=np.int64)
    if k <= 1 or len(nodes) <= 1:
        return [nodes]
    k = min(k, len(nodes))
    side, j = _tree_cut(edges[:3], g.number_of_nodes(), nodes, pop, k, rng, attempts, good, edges[3])
    rest = np.setdiff1d(nodes, side)
    return (tree_partition(g, side, pop, j, rng, attempts, edges, good)
            + tree_partition(g, rest, pop, k - j, rng, attempts, edges, good))


# -- 4. local search --------------------------------------------------------------------------
def _violation(x: float, lo: float, hi: float) -> float:
    return max(0.0, lo - x, x - hi)


def local_search(g: nx.Graph, labels: np.ndarray, pop: np.ndarray, lo: float, hi: float,
                 frozen: np.ndarray | None = None, max_rounds: int = 50) -> np.ndarray:
    """Move boundary units between adjacent parts while the total households outside
    ``[lo, hi]`` falls; a part is never emptied nor cut in two. Returns new labels."""
    labels = labels.copy()
    n_parts = labels.max() + 1
    part_pop = np.bincount(labels, weights=pop, minlength=n_parts)
    members: list[set[int]] = [set() for _ in range(n_parts)]
    for u, lab in enumerate(labels):
        members[lab].add(u)
    frozen = np.zeros(len(labels), bool) if frozen is None else frozen
    for _ in range(max_rounds):
        moved = False
        bad = [q for q in range(n_parts) if _violation(part_pop[q], lo, hi) > 0]
        for q in sorted(bad, key=lambda q: -_violation(part_pop[q], lo, hi)):
            too_big = part_pop[q] > hi
            # candidate moves: (unit, from, to)
            cands = []
            for u in list(members[q]):
                for v in g.neighbors(u):
                    r = labels[v]
                    if r != q:
                        cands.append((u, q, r) if too_big else (v, r, q))
            best, best_gain = None, 1e-9
            for u, a, b in set(cands):
                if frozen[u] or len(members[a]) <= 1:
                    continue
                before = _violation(part_pop[a], lo, hi) + _violation(part_pop[b], lo, hi)
                after = _violation(part_pop[a] - pop[u], lo, hi) + _violation(part_pop[b] + pop[u], lo, hi)
                gain = before - after
                if gain > best_gain and nx.is_connected(g.subgraph(members[a] - {u})):
                    best, best_gain = (u, a, b), gain
            if best is not None:
                u, a, b = best
                labels[u] = b
                members[a].discard(u)
                members[b].add(u)
                part_pop[a] -= pop[u]
                part_pop[b] += pop[u]
                moved = True
        if not moved:
            break
    return labels


# -- 5. orchestration -------------------------------------------------------------------------
def _dissolve_fragments(g: nx.Graph, labels: np.ndarray, pop: np.ndarray) -> np.ndarray:
    """Each part keeps its largest connected piece; smaller pieces join the adjacent part they
    share most edges with (so every part is contiguous)."""
    labels = labels.copy()
    for _ in range(10):
        changed = False
        for q in np.unique(labels):
            comps = list(nx.connected_components(g.subgraph(np.flatnonzero(labels == q).tolist())))
            if len(comps) <= 1:
                continue
            comps.sort(key=lambda c: (-pop[list(c)].sum(), -len(c), min(c)))
            for comp in comps[1:]:
                votes: dict[int, int] = {}
                for u in comp:
                    for v in g.neighbors(u):
                        if v not in comp and labels[v] != q:
                            votes[labels[v]] = votes.get(labels[v], 0) + 1
                if votes:
                    labels[list(comp)] = max(sorted(votes), key=votes.get)
                    changed = True
        if not changed:
            break
    _, labels = np.unique(labels, return_inverse=True)
    return labels


def partition(g: nx.Graph, pop: np.ndarray, target: float, tolerance: float, *,
              current: np.ndarray | None = None, rng: np.random.Generator | None = None,
              attempts: int = 8) -> np.ndarray:
    """Labels (one per node of ``g``) of a balanced contiguous partition; see the module text.

    Parameters
    ----------
    g : networkx.Graph over nodes ``0..n-1`` with edge ``weight``
    pop : ndarray of households per node
    target : households per part (> 0)
    tolerance : allowed relative deviation (0.10 = ±10 %)
    current : optional labels of today's grids (``-1`` for a node in none): keep them where possible
    rng : numpy Generator (default seeded 0: the same inputs give the same answer)
    attempts : spanning trees drawn per cut
    """
    rng = np.random.default_rng(0) if rng is None else rng
    lo, hi = target * (1 - tolerance), target * (1 + tolerance)
    n = len(pop)
    big = pop > hi
    labels = np.full(n, -1)
    nxt = 0
    for u in np.flatnonzero(big):
        labels[u] = nxt
        nxt += 1
    if current is not None:
        labels = _from_current(g, pop, target, current, big, labels, nxt, rng, attempts, tolerance / 2)
    else:
        rest = g.subgraph(np.flatnonzero(~big).tolist())
        for comp in sorted(nx.connected_components(rest), key=min):
            comp = sorted(comp)
            k = max(1, int(round(pop[comp].sum() / target)))
            for part in tree_partition(g, comp, pop, k, rng, attempts, good=tolerance / 2):
                labels[part] = nxt
                nxt += 1
    labels = _dissolve_fragments(g, labels, pop)
    return local_search(g, labels, pop, lo, hi, frozen=big)


def _from_current(g, pop, target, current, big, labels, nxt, rng, attempts, good):
    out = labels.copy()
    cur = current.copy()
    # nodes in no current grid: take a neighbour's grid (repeat until all placed or none can be)
    for _ in range(len(cur)):
        lost = np.flatnonzero((cur < 0) & ~big)
        if not len(lost):
            break
        progress = False
        for u in lost:
            lab = [cur[v] for v in g.neighbors(u) if cur[v] >= 0]
            if lab:
                cur[u] = min(lab)
                progress = True
        if not progress:
            cur[lost] = cur.max() + 1
    for q in np.unique(cur[~big]):
        nodes = np.flatnonzero((cur == q) & ~big).tolist()
        k = max(1, int(round(pop[nodes].sum() / target)))
        if k == 1:
            out[nodes] = nxt
            nxt += 1
            continue
        # split each connected piece of an oversized grid in proportion
        for comp in sorted(nx.connected_components(g.subgraph(nodes)), key=min):
            comp = sorted(comp)
            kc = max(1, int(round(pop[comp].sum() / target)))
            for part in tree_partition(g, comp, pop, kc, rng, attempts, good=good):
                out[part] = nxt
                nxt += 1
    return out


def propose(scope, points, households, roads=(), major_roads=(), *, target: float = 250,
            tolerance: float = 0.10, current=None, rng: np.random.Generator | None = None,
            attempts: int = 8) -> Proposal:
    """Cut ``scope`` into contiguous parts of about ``target`` households, covering it exactly.

    Parameters
    ----------
    scope : shapely Polygon/MultiPolygon in a metric CRS (e.g. a CGCS2000 Gauss-Krüger zone)
    points : array of shapely Points, one anchor per building (same CRS)
    households : array of int ≥ 0, one per building
    roads, major_roads : arrays of lines (same CRS); all roads cut blocks, major ones are
        strong barriers
    target : float > 0, households per part (250 urban, 150 rural)
    tolerance : float in [0, 1), allowed deviation as a fraction
    current : optional array of int, one per building: its current grid (any integers, ``-1``
        for none). Given, the proposal keeps today's grids where they are within tolerance.
    rng : numpy Generator, default ``default_rng(0)``
    attempts : spanning trees drawn per cut (budget)

    Returns
    -------
    Proposal

    Raises
    ------
    ProposalError
        An empty scope, a negative household count, a target ≤ 0, a tolerance outside [0, 1).

    Examples
    --------
    >>> from shapely import box, points
    >>> p = propose(box(0, 0, 100, 100), points([[25, 50], [75, 50]]), [250, 250], target=250)
    >>> p.n_parts, sorted(p.households.tolist())
    (2, [250, 250])
    """
    if scope is None or scope.is_empty or scope.area <= 0:
        raise ProposalError("the scope has no area")
    if not target > 0:
        raise ProposalError(f"target must be > 0, got {target}")
    if not 0 <= tolerance < 1:
        raise ProposalError(f"tolerance must be in [0, 1), got {tolerance}")
    points = np.asarray(points, dtype=object)
    households = np.asarray(households, dtype=np.int64)
    if len(points) != len(households):
        raise ProposalError(f"{len(points)} points but {len(households)} household counts")
    if (households < 0).any():
        raise ProposalError("household counts must be ≥ 0")
    if len(points) == 0:
        return Proposal(np.zeros(0, int), np.asarray([scope], dtype=object), np.zeros(1, int),
                        [{"part": 0, "households": 0, "deviation": -1.0, "reason": "no_buildings"}])
    # units: buildings sharing an anchor point (to the centimetre) are one unit
    xy = np.round(shapely.get_coordinates(points), 2)
    uniq, unit_of = np.unique(xy, axis=0, return_inverse=True)
    unit_of = unit_of.ravel()
    upop = np.bincount(unit_of, weights=households, minlength=len(uniq))
    upts = shapely.points(uniq)
    blk = blocks(scope, roads)
    cells, block_of, empty = unit_cells(blk, upts)
    super_of = _superblock_of(scope, major_roads, blk)

    def crossing(a, b):
        cost = np.ones(len(a))
        cost[block_of[a] != block_of[b]] = MINOR_ROAD_COST
        cost[super_of[block_of[a]] != super_of[block_of[b]]] = MAJOR_ROAD_COST
        return cost

    g = adjacency(cells, upts, crossing)
    ucur = None
    if current is not None:
        current = np.asarray(current)
        ucur = np.full(len(uniq), -1)
        # a unit takes the grid of the most households among its buildings
        order = np.lexsort((-households, unit_of))
        for u, c in zip(unit_of[order][::-1], current[order][::-1]):
            ucur[u] = c
    ulabels = partition(g, upop, target, tolerance, current=ucur, rng=rng, attempts=attempts)
    n_parts = ulabels.max() + 1
    geoms = np.empty(n_parts, dtype=object)
    for q in range(n_parts):
        geoms[q] = shapely.union_all(cells[ulabels == q])
    block_part = _attach_empty_blocks(geoms, blk[empty])
    geoms = coverage_of(scope, np.concatenate([cells, blk[empty]]), np.concatenate([ulabels, block_part]), n_parts)
    part_pop = np.bincount(ulabels, weights=upop, minlength=n_parts).astype(np.int64)
    lo, hi = target * (1 - tolerance), target * (1 + tolerance)
    exceptions = []
    for q in range(n_parts):
        hh = int(part_pop[q])
        if lo <= hh <= hi:
            continue
        units = np.flatnonzero(ulabels == q)
        if upop[units].max(initial=0) > hi:
            reason = "oversized_building"
        elif len(units) and not any(ulabels[v] != q for u in units for v in g.neighbors(u)):
            reason = "isolated"
        else:
            reason = "units_too_coarse"
        exceptions.append({"part": q, "households": hh, "deviation": round(hh / target - 1, 4), "reason": reason})
    return Proposal(ulabels[unit_of], geoms, part_pop, exceptions)


def _superblock_of(scope, major_roads, blk: np.ndarray) -> np.ndarray:
    """For each block, the index of the area between major roads that holds it."""
    sup = blocks(scope, major_roads)
    idx = shapely.STRtree(sup).query(shapely.point_on_surface(blk), predicate="intersects")
    out = np.zeros(len(blk), dtype=np.int64)
    out[idx[0]] = idx[1]
    return out


def _attach_empty_blocks(geoms: np.ndarray, empty: np.ndarray) -> np.ndarray:
    """The part each block holding no building joins: the one it shares the longest border
    with (blocks may join through other empty blocks), else the nearest."""
    geoms = geoms.copy()
    out = np.full(len(empty), -1)
    for _ in range(len(empty) + 1):
        pending = np.flatnonzero(out < 0)
        if not len(pending):
            break
        progress = False
        for b in pending:
            shared = shapely.length(shapely.intersection(shapely.boundary(geoms), empty[b].boundary))
            if shared.max() > 0.01:
                out[b] = int(np.argmax(shared))
                geoms[out[b]] = shapely.union(geoms[out[b]], empty[b])
                progress = True
        if not progress:             # touching nothing: the nearest part
            for b in pending:
                out[b] = int(np.argmin(shapely.distance(geoms, empty[b])))
            break
    return out


def coverage_of(scope, pieces: np.ndarray, labels: np.ndarray, n_parts: int, grid_size: float = 0.001) -> np.ndarray:
    """Part polygons that form an exact coverage: the pieces' edges are noded together (on a
    ``grid_size`` grid), cut into faces, each face takes the label of the piece holding it, and
    the faces of a part are dissolved. Neighbouring parts then share the very same vertices,
    as GEOS coverage validity (and a later dissolve) requires."""
    lines = shapely.union_all(np.concatenate([shapely.boundary(pieces), [scope.boundary]]), grid_size=grid_size)
    faces = shapely.get_parts(shapely.polygonize(shapely.get_parts(lines)))
    inside = shapely.point_on_surface(faces)
    faces = faces[shapely.intersects(scope, inside)]
    inside = shapely.point_on_surface(faces)
    fi, pi = shapely.STRtree(pieces).query(inside, predicate="intersects")
    face_label = np.full(len(faces), -1)
    face_label[fi[::-1]] = labels[pi[::-1]]          # the first piece holding the face wins
    lost = np.flatnonzero(face_label < 0)
    if len(lost):
        face_label[lost] = labels[shapely.STRtree(pieces).nearest(inside[lost])]
    out = np.empty(n_parts, dtype=object)
    for q in range(n_parts):
        out[q] = shapely.union_all(faces[face_label == q], grid_size=grid_size)
    return out
