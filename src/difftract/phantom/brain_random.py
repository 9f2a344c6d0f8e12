"""Random brain-like layouts: bundles between grey-matter regions, routed through MNI white matter.

Every seed gives a new set of bundles inside the MNI152 template (:mod:`.template`). A
bundle joins two grey-matter voxels that touch the white matter (cortex or deep grey
matter) along the cheapest path through a graph of white-matter voxels, smoothed into a
few spline control points. Three kinds of bundles are drawn:

- ``path``: both ends drawn at random; the route prefers the core of the white matter
  and avoids running along earlier bundles while crossing them costs less, so bundles
  cross rather than merge;
- ``cross``: forced through the middle third of an earlier bundle at 45-90 degrees;
- ``kiss``: passes tangentially beside an earlier bundle, its axis 0-25 degrees off the
  other's, so the two touch without overlapping.

Radii are 1.5-5 mm, cross-sections may be elliptical, and some bundles fan out (their
radius grows up to 2.5-fold at one or both ends). A drawn bundle is kept only when it is
30-150 mm long, stays inside the brain, runs through white matter between its ends,
never folds (its radius stays below the centreline's radius of curvature, and distant
parts of the tube never meet) and does not run alongside another bundle for long.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph
from scipy.spatial import cKDTree

from ..errors import ConfigError
from .geometry import Bundle, Tube, make_tube
from .presets import MAX_BEND, Layout, folds_locally
from .template import Template, load_template

N_BUNDLES = (12, 30)          # default count, drawn per seed (inclusive)
RADIUS_MM = (1.5, 5.0)
LENGTH_MM = (30.0, 150.0)
FAN = (1.5, 2.5)              # end radius / body radius of a fanning end
MAX_FAN_RADIUS_MM = 8.0
MIN_END_RADIUS_MM = 1.0
KIND_WEIGHTS = {"path": 0.4, "cross": 0.4, "kiss": 0.2}
CROSS_ANGLE_DEG = (45.0, 90.0)
KISS_ANGLE_DEG = (0.0, 25.0)
MAX_PARALLEL_MM = 10.0        # longest run alongside (< 30 degrees) and inside another tube
MIN_WM_SHARE = 0.85           # of the centreline away from its ends
END_MM = 6.0                  # end segments allowed outside white matter
ALONG_COST = 4.0              # extra routing cost per mm along an earlier bundle, inside it
ACROSS_BONUS = 0.5            # routing cost saved per mm across an earlier bundle: crossings are common
CHECK_DS = 0.5                # centreline sampling of the checks, mm
GREY_COST = 20.0              # routing cost of grey-matter voxels: entered only at the ends
AXES_STEPS = np.array([s for s in np.ndindex(3, 3, 3) if s > (1, 1, 1)]) - 1  # the 13 neighbour axes


@dataclass
class Anatomy:
    """The template and the routing graph built from it (one per voxel size)."""

    template: Template
    wm: np.ndarray            # (X, Y, Z) bool, white-matter fraction >= 0.5
    nodes: np.ndarray         # (N, 3) int, voxels of the routing graph: white matter and end voxels
    node_index: np.ndarray    # (X, Y, Z) int, node number or -1
    ends: np.ndarray          # (E,) int, node numbers of the end voxels
    graph: sparse.csr_matrix  # routing cost of the edges between 26-neighbour nodes, no bundle placed
    edge_rows: np.ndarray     # row of each stored edge, to reweight the graph
    edge_axis: np.ndarray     # axis (index into AXES_STEPS) of each stored edge
    twin: np.ndarray          # the stored edge running the other way


@lru_cache(maxsize=4)
def anatomy(voxel_size: float = 2.0) -> Anatomy:
    """The template at ``voxel_size`` mm and its routing graph, built once per process."""
    template = load_template(voxel_size)
    wm = template.wm >= 0.5
    # End voxels: mostly grey matter and face-adjacent to white matter, i.e. where fibres enter cortex
    # or deep nuclei.
    end_mask = (template.gm >= 0.5) & ~wm & ndimage.binary_dilation(wm)
    routable = wm | end_mask
    nodes = np.argwhere(routable)
    node_index = np.full(template.shape, -1, dtype=np.int64)
    node_index[routable] = np.arange(len(nodes))
    # An edge costs its length times the mean cost per mm of its nodes, which falls from 3 at the
    # white-matter border to 1 in its core, so routes follow the middle of the tracts instead of
    # hugging the cortex.
    depth = ndimage.distance_transform_edt(wm) * voxel_size
    cost = np.where(wm, 1.0 + 2.0 * np.exp(-(depth - voxel_size) / 4.0), GREY_COST)[routable]
    rows, cols, lengths = [], [], []
    for offset in AXES_STEPS:  # each undirected edge once; both directions are stored below
        neighbour = nodes + offset
        ok = np.all((neighbour >= 0) & (neighbour < template.shape), axis=1)
        j = np.full(len(nodes), -1)
        j[ok] = node_index[tuple(neighbour[ok].T)]
        i = np.flatnonzero(j >= 0)
        rows.append(i), cols.append(j[i]), lengths.append(np.full(len(i), np.linalg.norm(offset) * voxel_size))
    r, c, w = (np.concatenate(a) for a in (rows, cols, lengths))
    graph = sparse.csr_matrix((np.r_[w, w], (np.r_[r, c], np.r_[c, r])), shape=(len(nodes),) * 2)
    edge_rows = np.repeat(np.arange(len(nodes)), np.diff(graph.indptr))
    graph.data = graph.data * 0.5 * (cost[edge_rows] + cost[graph.indices])
    # Edges sorted by (column, row) are, for a symmetric pattern, the twins of the edges in CSR order.
    twin = np.lexsort((edge_rows, graph.indices))
    # Each of the 26 steps (as a base-3 code) to its axis: a step and its opposite share one.
    axis_of = np.zeros(27, dtype=np.int64)
    for k, step in enumerate(AXES_STEPS):
        axis_of[(step + 1) @ [9, 3, 1]] = axis_of[(1 - step) @ [9, 3, 1]] = k
    edge_axis = axis_of[(nodes[graph.indices] - nodes[edge_rows] + 1) @ [9, 3, 1]]
    return Anatomy(template, wm, nodes, node_index, node_index[end_mask], graph, edge_rows, edge_axis, twin)


def brain_random_layout(rng: np.random.Generator, n_bundles: int | None = None,
                        streamlines_per_bundle: int = 100, voxel_size: float = 2.0,
                        max_tries: int = 100) -> Layout:
    """A random brain-like layout in the MNI152 template.

    Parameters
    ----------
    rng : Generator
        The only source of randomness: the same state gives the same layout.
    n_bundles : int or None
        Bundles to place; None draws 12-30.
    streamlines_per_bundle : int
    voxel_size : float
        Grid spacing, mm (the template supports 1.25-3).
    max_tries : int
        Draws per bundle before giving up with a :class:`ConfigError`.
    """
    atlas = anatomy(float(voxel_size))
    template = atlas.template
    n = int(rng.integers(N_BUNDLES[0], N_BUNDLES[1] + 1)) if n_bundles is None else int(n_bundles)
    if n < 1:
        raise ConfigError(f"brain-random needs at least one bundle, got n_bundles={n}")
    placer = _Placer(atlas, rng, streamlines_per_bundle)
    for k in range(n):
        for _ in range(max_tries):
            kind = "path" if not placer.tubes else rng.choice(list(KIND_WEIGHTS), p=list(KIND_WEIGHTS.values()))
            bundle = placer.draw(str(kind), f"bundle{k + 1:02d}_{kind}")
            if bundle is not None and placer.accept(bundle):
                break
        else:
            raise ConfigError(f"brain-random: could not place bundle {k + 1} of {n} in {max_tries} tries; "
                              f"ask for fewer bundles (n_bundles) or a finer voxel_size")

    return Layout(template.shape, template.voxel_size, [t.bundle for t in placer.tubes], template.in_brain,
                  origin=template.origin, isotropic={"gm": template.gm, "csf": template.csf})


class _Placer:
    """Draws candidate bundles and keeps those that pass every check."""

    def __init__(self, atlas: Anatomy, rng: np.random.Generator, streamlines_per_bundle: int):
        self.atlas, self.rng, self.n_streamlines = atlas, rng, int(streamlines_per_bundle)
        self.vs = atlas.template.voxel_size
        self.tubes: list[Tube] = []
        self.alignment = np.zeros((len(atlas.nodes), 3, 3))  # sum of t t^T of the bundles in each voxel
        self.along = np.zeros((len(atlas.nodes), len(AXES_STEPS)))  # sum of cos^2 with each axis
        self.count = np.zeros(len(atlas.nodes))  # bundles in each voxel
        self.routes = atlas.graph.copy()
        self.ends_mm = atlas.nodes[atlas.ends] * self.vs
        self.nodes_mm = atlas.nodes * self.vs
        outside = ~atlas.template.brain
        shell = outside & ndimage.binary_dilation(atlas.template.brain)  # where a tube would first leave
        self.shell = cKDTree(np.argwhere(shell) * self.vs)

    # routing ---------------------------------------------------------------------------------
    def _reweight(self, changed: np.ndarray) -> None:
        """Update the costs of the edges at the ``changed`` nodes for the bundles now lying there.

        Inside earlier bundles a step's cost is multiplied by ``1 + ALONG_COST cos^2 - ACROSS_BONUS
        sin^2`` summed over those bundles (at least ``1 - ACROSS_BONUS``), the angle taken between the
        step and each bundle: running alongside is expensive and crossing cheap, so routes cross
        bundles instead of merging with them.
        """
        a = self.atlas
        units = AXES_STEPS / np.linalg.norm(AXES_STEPS, axis=1, keepdims=True)
        self.along[changed] = np.einsum("nij,ai,aj->na", self.alignment[changed], units, units)
        self.count[changed] = np.trace(self.alignment[changed], axis1=1, axis2=2)
        starts, lengths = a.graph.indptr[changed], np.diff(a.graph.indptr)[changed]
        edges = np.arange(lengths.sum()) + np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
        edges = np.union1d(edges, a.twin[edges])
        rows, cols, axis = a.edge_rows[edges], a.graph.indices[edges], a.edge_axis[edges]
        cos2 = 0.5 * (self.along[rows, axis] + self.along[cols, axis])
        sin2 = 0.5 * (self.count[rows] + self.count[cols]) - cos2
        factor = np.maximum(1.0 + ALONG_COST * cos2 - ACROSS_BONUS * sin2, 1.0 - ACROSS_BONUS)
        self.routes.data[edges] = a.graph.data[edges] * factor

    def _route(self, source: int, reach_mm: float) -> tuple[np.ndarray, np.ndarray]:
        """Cheapest routes from node ``source``: (cost to every node, predecessors).

        The search stops at a cost of twice ``reach_mm`` (a mm costs 1 in the white matter's core,
        3 at its border), which bounds its time; no route we want is longer.
        """
        return csgraph.dijkstra(self.routes, indices=source, return_predecessors=True, limit=2.0 * reach_mm)

    def _polyline(self, predecessors: np.ndarray, target: int) -> np.ndarray:
        """Voxel centres (mm) from the route's source to ``target``."""
        chain = [target]
        while predecessors[chain[-1]] >= 0:
            chain.append(predecessors[chain[-1]])
        return self.atlas.nodes[chain[::-1]] * self.vs

    def _pick_end(self, cost: np.ndarray, origin: np.ndarray, direction: np.ndarray | None,
                  lo: float, hi: float) -> int | None:
        """A reachable end voxel at ``lo``-``hi`` mm from ``origin`` (within 60 degrees of ``direction``)."""
        offset = self.ends_mm - origin
        dist = np.linalg.norm(offset, axis=1)
        ok = np.isfinite(cost[self.atlas.ends]) & (dist >= lo) & (dist <= hi)
        if direction is not None:
            ok &= offset @ direction >= 0.5 * dist
        choices = np.flatnonzero(ok)
        return None if len(choices) == 0 else int(self.atlas.ends[self.rng.choice(choices)])

    def _control_points(self, polyline: np.ndarray, spacing: float) -> np.ndarray:
        """A few points along a smoothed voxel route, its two ends kept exactly."""
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(polyline, axis=0), axis=1))])
        if arc[-1] < 1e-6:
            return polyline[:1]
        s = np.linspace(0.0, arc[-1], int(arc[-1]) + 2)
        dense = np.column_stack([np.interp(s, arc, polyline[:, k]) for k in range(3)])
        smooth = ndimage.gaussian_filter1d(dense, sigma=3.0 / (s[1] - s[0]), axis=0, mode="nearest")
        pick = np.rint(np.linspace(0, len(s) - 1, max(1, round(arc[-1] / spacing)) + 1)).astype(int)
        points = smooth[pick]
        points[1:-1] += self.rng.normal(scale=1.0, size=points[1:-1].shape)  # waviness within a voxel
        points[0], points[-1] = polyline[0], polyline[-1]
        return points

    # drawing ---------------------------------------------------------------------------------
    def draw(self, kind: str, name: str) -> Bundle | None:
        """One candidate bundle of ``kind`` (path, cross, kiss); None when the draw found no route."""
        rng = self.rng
        radius = rng.uniform(*RADIUS_MM)
        spacing = rng.uniform(12.0, 20.0)
        points = self._draw_path(spacing) if kind == "path" else self._draw_through(kind, radius, spacing)
        if points is None or len(points) < 2:
            return None
        fans = np.ones(2)
        u = rng.uniform()
        if u < 0.35:
            fans[rng.integers(2)] = rng.uniform(*FAN)
        elif u < 0.5:
            fans[:] = rng.uniform(*FAN, size=2)
        head, tail = np.minimum(radius * fans, MAX_FAN_RADIUS_MM)
        aspect = rng.uniform(0.6, 1.0)  # flattened cross-sections, as many tracts have
        centreline = make_tube(Bundle(name, points, radius=(1.0,)), ds=CHECK_DS)
        profile = self._fit_profile(centreline, np.array([head, radius, radius, tail]))
        if profile is None:
            return None
        return Bundle(name, points, radius=tuple(profile), thickness=tuple(profile * aspect),
                      n_streamlines=self.n_streamlines)

    def _fit_profile(self, centreline: Tube, profile: np.ndarray) -> np.ndarray | None:
        """Shrink the radius profile where the bend or the brain's edge leaves too little room.

        The radius is linear between knots at 0, 1/3, 2/3 and 1 of the length, so a knot no larger
        than the room left anywhere on its two segments keeps the whole segment within it. None when
        the body would fall below the smallest radius.
        """
        curvature = np.linalg.norm(np.diff(centreline.tangent, axis=0), axis=1) / np.diff(centreline.s)
        bend_room = MAX_BEND / np.maximum(np.r_[curvature[0], curvature], 1e-9)
        dist, _ = self.shell.query(centreline.centre)
        # 10 % spare: finer sampling (simulate's) finds sharper curvature peaks; accept() checks it.
        room = np.minimum(0.9 * bend_room, dist - self._margin())
        frac = centreline.s / centreline.length
        knots = np.linspace(0.0, 1.0, len(profile))
        step = knots[1]
        fitted = np.array([min(r, room[np.abs(frac - x) <= step].min()) for r, x in zip(profile, knots)])
        if fitted[1:-1].min() < RADIUS_MM[0] or fitted.min() < MIN_END_RADIUS_MM:
            return None
        return fitted

    def _draw_path(self, spacing: float) -> np.ndarray | None:
        """Both ends at random; the cheapest route between them."""
        source = int(self.rng.choice(self.atlas.ends))
        cost, predecessors = self._route(source, LENGTH_MM[1])
        origin = self.atlas.nodes[source] * self.vs
        target = self._pick_end(cost, origin, None, 0.8 * LENGTH_MM[0], 0.7 * LENGTH_MM[1])
        if target is None:
            return None
        return self._control_points(self._polyline(predecessors, target), spacing)

    def _draw_through(self, kind: str, radius: float, spacing: float, tries: int = 10) -> np.ndarray | None:
        """Through (cross) or tangentially beside (kiss) the middle third of an earlier bundle."""
        rng = self.rng
        for _ in range(tries):  # cheap: find a meeting whose straight leads start in white matter
            host = self.tubes[rng.integers(len(self.tubes))]
            i = int(rng.integers(len(host.s) // 3, 2 * len(host.s) // 3 + 1))
            t = host.tangent[i]
            psi = rng.uniform(0.0, 2.0 * np.pi)
            side = np.cos(psi) * host.n1[i] + np.sin(psi) * host.n2[i]
            if kind == "cross":
                angle = np.radians(rng.uniform(*CROSS_ANGLE_DEG))
                centre = host.centre[i]
                direction = np.cos(angle) * t + np.sin(angle) * side
            else:  # beside the host, touching it: the axes are skew lines at the sum of the radii
                angle = np.radians(rng.uniform(*KISS_ANGLE_DEG))
                centre = host.centre[i] + (max(host.r1[i], host.r2[i]) + radius + rng.uniform(0.0, 1.0)) * side
                direction = np.cos(angle) * t + np.sin(angle) * np.cross(t, side)
            lead = rng.uniform(6.0, 10.0)  # straight run on each side, so the angle holds where they meet
            starts = [centre - lead * direction, centre + lead * direction]
            sources = [self._white_matter_node(p) for p in starts]
            if None not in sources:
                break
        else:
            return None
        halves = []
        for sign, start, source in zip((-1.0, 1.0), starts, sources):
            cost, predecessors = self._route(source, 0.5 * LENGTH_MM[1])
            target = self._pick_end(cost, centre, sign * direction, 15.0, 0.4 * LENGTH_MM[1])
            if target is None:
                return None
            polyline = self._polyline(predecessors, target)
            polyline[0] = start
            halves.append(self._control_points(polyline, spacing))
        return np.vstack([halves[0][::-1], centre[None], halves[1]])

    def _white_matter_node(self, point: np.ndarray) -> int | None:
        """The routing node of the white-matter voxel holding ``point``, or None."""
        voxel = np.rint(point / self.vs).astype(int)
        if np.any(voxel < 0) or np.any(voxel >= self.atlas.wm.shape) or not self.atlas.wm[tuple(voxel)]:
            return None
        return int(self.atlas.node_index[tuple(voxel)])

    # checks ----------------------------------------------------------------------------------
    def accept(self, bundle: Bundle) -> bool:
        """Keep ``bundle`` if it passes every check; it then raises the routing cost where it lies."""
        tube = make_tube(bundle, ds=CHECK_DS)
        if not LENGTH_MM[0] <= tube.length <= LENGTH_MM[1]:
            return False
        if folds(tube) or not self._inside(tube) or _white_matter_share(tube, self.atlas) < MIN_WM_SHARE:
            return False
        if self.tubes and _parallel_run(tube, self.tubes) > MAX_PARALLEL_MM:
            return False
        if folds(make_tube(bundle)):  # at the sampling simulate() uses
            return False
        self.tubes.append(tube)
        self._occupy(tube)
        return True

    def _inside(self, tube: Tube) -> bool:
        """No voxel outside the brain can hold a point of the tube.

        A point leaving the brain first enters a voxel of the outer shell; a voxel holds points up
        to half its diagonal from its centre, and the centreline is sampled every ds mm.
        """
        dist, _ = self.shell.query(tube.centre)
        return bool(np.all(dist > np.maximum(tube.r1, tube.r2) + self._margin()))

    def _margin(self) -> float:
        return self.vs * np.sqrt(3.0) / 2.0 + 0.5 * CHECK_DS

    def _occupy(self, tube: Tube) -> None:
        nodes_mm = self.nodes_mm
        reach = max(tube.r1.max(), tube.r2.max())
        near = np.all((nodes_mm >= tube.centre.min(0) - reach) & (nodes_mm <= tube.centre.max(0) + reach), axis=1)
        idx = np.flatnonzero(near)
        dist, j = tube.tree.query(nodes_mm[idx])
        inside = dist <= np.maximum(tube.r1, tube.r2)[j]
        t = tube.tangent[j[inside]]
        self.alignment[idx[inside]] += t[:, :, None] * t[:, None, :]
        self._reweight(idx[inside])


def folds(tube: Tube) -> bool:
    """True when the tube overlaps itself: locally (radius beyond MAX_BEND of the radius of
    curvature, the inner side of the bend self-intersects) or globally (parts far apart along
    the tube come closer than their radii)."""
    if folds_locally(tube, MAX_BEND):
        return True
    r = np.maximum(tube.r1, tube.r2)
    pairs = tube.tree.query_pairs(2.0 * r.max(), output_type="ndarray")
    if len(pairs) == 0:
        return False
    i, j = pairs.T
    gap = np.linalg.norm(tube.centre[i] - tube.centre[j], axis=1)
    reach = r[i] + r[j]
    # Along a fold-free bend (radius <= MAX_BEND x radius of curvature) the chord over an arc of
    # 2 (r_i + r_j) still exceeds r_i + r_j, so closer pairs further apart along the tube meet.
    return bool(np.any((gap < reach) & (np.abs(tube.s[i] - tube.s[j]) > 2.0 * reach)))


def _white_matter_share(tube: Tube, atlas: Anatomy) -> float:
    """Share of the centreline, its END_MM end segments aside, in voxels of white-matter fraction >= 0.5."""
    body = (tube.s > END_MM) & (tube.s < tube.length - END_MM)
    if not body.any():
        return 0.0
    return float(np.mean(atlas.template.sample("wm", tube.centre[body]) >= 0.5))


def _parallel_run(tube: Tube, others: list[Tube]) -> float:
    """The most mm of ``tube`` that lie inside one other tube running within 30 degrees of it."""
    step = max(1, int(round(1.0 / (tube.s[1] - tube.s[0]))))
    centre, tangent = tube.centre[::step], tube.tangent[::step]
    r = np.maximum(tube.r1, tube.r2)[::step]
    worst = 0.0
    for other in others:
        r_other = np.maximum(other.r1, other.r2)
        dist, j = other.tree.query(centre, distance_upper_bound=r.max() + r_other.max())
        near = np.isfinite(dist)
        jj = j[near]
        inside = dist[near] < 0.9 * (r[near] + r_other[jj])
        parallel = np.abs(np.einsum("pk,pk->p", tangent[near], other.tangent[jj])) > np.cos(np.radians(30.0))
        worst = max(worst, float(np.sum(inside & parallel)) * step * (tube.s[1] - tube.s[0]))
    return worst
