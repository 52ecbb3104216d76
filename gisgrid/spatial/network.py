"""Walking distance along a street network (pure geometry, no database).

The roads are noded (split wherever two of them cross or touch) into a graph whose edges are the
pieces between nodes, weighted by their length. A point off the network (a patrol point, a
building) joins it at the nearest place on the nearest piece, and the straight walk to that
place counts. The distance from a set of sources to each target is then

    offset(source) + along the network + offset(target),

the shortest over all sources, computed with one Dijkstra run (networkx) from a virtual node
tied to every source's joining place, cut off at ``cutoff``. Everything is in one metric CRS
(metres): the caller projects.
"""
from __future__ import annotations

import networkx as nx
import numpy as np
import shapely

#: coordinates are rounded to this (metres) before noding, so pieces that meet share a node
GRID_SIZE = 0.01


def segments(roads) -> np.ndarray:
    """The road lines noded into pieces that meet only at their ends.

    Parameters
    ----------
    roads : array-like of LineString or MultiLineString
        In a metric CRS.

    Returns
    -------
    numpy.ndarray of LineString
    """
    lines = shapely.set_precision(np.asarray(roads, dtype=object), GRID_SIZE)
    lines = lines[~shapely.is_empty(lines)]
    if len(lines) == 0:
        return np.empty(0, dtype=object)
    noded = shapely.node(shapely.multilinestrings(shapely.get_parts(lines)))
    parts = shapely.get_parts(noded)
    return parts[shapely.length(parts) > 0]


def _snap(tree, pieces, pts):
    """For each point: index of the nearest piece, the straight distance to it, and how far
    along the piece the joining place lies."""
    (pi, ti), dist = tree.query_nearest(pts, return_distance=True, all_matches=False)
    order = np.argsort(pi)
    ti, dist = ti[order], dist[order]
    along = shapely.line_locate_point(pieces[ti], pts)
    return ti, dist, along


def distances(roads, sources, targets, cutoff: float) -> np.ndarray:
    """Shortest walking distance from any of ``sources`` to each of ``targets`` along ``roads``.

    Parameters
    ----------
    roads : array-like of LineString or MultiLineString
        The street network, in metres.
    sources, targets : array-like of Point
        In the same CRS.
    cutoff : float
        Distances above it are not searched: those targets get ``inf``.

    Returns
    -------
    numpy.ndarray of float
        One distance per target (``inf`` beyond ``cutoff`` or with no network at all).

    Examples
    --------
    An L-shaped street; a source at its west end, a building 10 m off each arm:

    >>> from shapely import LineString, Point
    >>> roads = [LineString([(0, 0), (400, 0)]), LineString([(400, 0), (400, 400)])]
    >>> distances(roads, [Point(0, 10)], [Point(200, -20), Point(390, 100)], 1000).round(1).tolist()
    [230.0, 520.0]
    """
    targets = np.asarray(targets, dtype=object)
    out = np.full(len(targets), np.inf)
    pieces = segments(roads)
    sources = np.asarray(sources, dtype=object)
    if len(pieces) == 0 or len(sources) == 0 or len(targets) == 0:
        return out
    tree = shapely.STRtree(pieces)
    lengths = shapely.length(pieces)
    ends = np.round(np.stack([shapely.get_coordinates(shapely.get_point(pieces, 0)),
                              shapely.get_coordinates(shapely.get_point(pieces, -1))], axis=1) / GRID_SIZE).astype(np.int64)
    node_ids: dict[tuple[int, int], int] = {}
    u = np.array([node_ids.setdefault((int(x), int(y)), len(node_ids)) for x, y in ends[:, 0]])
    v = np.array([node_ids.setdefault((int(x), int(y)), len(node_ids)) for x, y in ends[:, 1]])
    graph = nx.Graph()
    for a, b, w in zip(u.tolist(), v.tolist(), lengths.tolist()):
        if a != b and (not graph.has_edge(a, b) or graph[a][b]["weight"] > w):
            graph.add_edge(a, b, weight=w)

    s_piece, s_off, s_along = _snap(tree, pieces, sources)
    start = -1                                   # the virtual node tied to every source
    for k, off, at in zip(s_piece.tolist(), s_off.tolist(), s_along.tolist()):
        for node, w in ((u[k], off + at), (v[k], off + lengths[k] - at)):
            if w <= cutoff and (not graph.has_edge(start, node) or graph[start][node]["weight"] > w):
                graph.add_edge(start, int(node), weight=w)
    reached = nx.single_source_dijkstra_path_length(graph, start, cutoff=cutoff, weight="weight") \
        if start in graph else {}
    dist_node = np.full(len(node_ids), np.inf)
    for node, d in reached.items():
        if node != start:
            dist_node[node] = d

    t_piece, t_off, t_along = _snap(tree, pieces, targets)
    via_u = t_off + t_along + dist_node[u[t_piece]]
    via_v = t_off + (lengths[t_piece] - t_along) + dist_node[v[t_piece]]
    out = np.minimum(via_u, via_v)
    # a source on the same piece walks along it directly, not through a node
    same = {}
    for k, off, at in zip(s_piece.tolist(), s_off.tolist(), s_along.tolist()):
        same.setdefault(k, []).append((off, at))
    for i, k in enumerate(t_piece.tolist()):
        for off, at in same.get(k, ()):
            out[i] = min(out[i], off + abs(at - t_along[i]) + t_off[i])
    out[out > cutoff] = np.inf
    return out
