"""Streamline clustering with DIPY's QuickBundles, and its agreement with ground-truth bundles.

QuickBundles is DIPY's (:class:`dipy.segment.clustering.QuickBundles`), not rewritten here:
streamlines in RAS mm are resampled to ``nb_points`` points (``ResampleFeature``) and
compared with the average pointwise Euclidean distance, taking the smaller of the direct
and flipped orders (the MDF distance; DIPY's default metric ``"MDF_12points"`` is exactly
``AveragePointwiseEuclideanMetric(ResampleFeature(nb_points=12))``). A streamline joins
the nearest cluster whose centroid is within ``threshold`` mm, or starts a new one.
DIPY's QuickBundles has no default threshold; 10 mm is the value of its docstring example
and its tutorial, and difftract's default.

QuickBundles is sequential, so its clusters depend on the order in which streamlines are
visited: ``ordering="file"`` (the default) visits them as stored; ``"random"`` visits them
in a permutation drawn from ``seed``; ``"length"`` longest first (long streamlines then
seed the centroids). Cluster numbers are renumbered biggest first (ties: first visited).

Agreement with ground truth is the adjusted Rand index (Hubert & Arabie 1985) of the
contingency table between cluster labels and true bundle labels, on the streamlines that
belong to a bundle: for the ground-truth tractogram every streamline (its ``bundle``
per-streamline value), for a tracked one the Tractometer's valid streamlines (each VS's
bundle); invalid connections (IC) and no connections (NC) are counted separately.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError

DEFAULT_THRESHOLD_MM = 10.0
DEFAULT_NB_POINTS = 12
ORDERINGS = ("file", "random", "length")


@dataclass
class Clustering:
    """QuickBundles' result, clusters numbered biggest first.

    Attributes
    ----------
    labels : ndarray (S,) int64
        Cluster of every streamline (0 is the biggest); ``-1`` for streamlines folded into
        "other" by ``min_size``.
    indices : list of ndarray
        Streamline indices of each kept cluster, ascending.
    centroids : list of ndarray (nb_points, 3)
        Each kept cluster's centroid in RAS mm (DIPY's running mean of its resampled members).
    other : ndarray
        Indices of the streamlines of clusters smaller than ``min_size``.
    """

    labels: np.ndarray
    indices: list[np.ndarray]
    centroids: list[np.ndarray]
    other: np.ndarray
    threshold: float
    nb_points: int
    ordering: str
    seed: int | None
    min_size: int
    n_clusters_before_min_size: int
    params: dict = field(default_factory=dict)

    @property
    def sizes(self) -> list[int]:
        return [len(i) for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)


def check_parameters(threshold: float, nb_points: int, ordering: str, min_size: int) -> None:
    """Refuse parameters QuickBundles cannot use (:class:`ConfigError`), before any work."""
    if not np.isfinite(threshold) or threshold <= 0:
        raise ConfigError(f"the threshold must be a positive distance in mm, got {threshold:g}")
    if nb_points < 2:
        raise ConfigError(f"the number of resampling points must be at least 2, got {nb_points}")
    if ordering not in ORDERINGS:
        raise ConfigError(f"unknown ordering {ordering!r}; use one of {', '.join(ORDERINGS)}")
    if min_size < 1:
        raise ConfigError(f"the minimum cluster size must be at least 1, got {min_size}")


def visiting_order(streamlines_rasmm, ordering: str = "file", seed: int | None = 0) -> np.ndarray:
    """The order in which QuickBundles visits the streamlines (see the module docstring)."""
    n = len(streamlines_rasmm)
    if ordering == "file":
        return np.arange(n)
    if ordering == "random":
        return np.random.default_rng(seed).permutation(n)
    if ordering == "length":
        lengths = np.array([float(np.linalg.norm(np.diff(s, axis=0), axis=1).sum()) if len(s) > 1 else 0.0
                            for s in streamlines_rasmm])
        return np.argsort(-lengths, kind="stable")
    raise ConfigError(f"unknown ordering {ordering!r}; use one of {', '.join(ORDERINGS)}")


def quickbundles(streamlines_rasmm, threshold: float = DEFAULT_THRESHOLD_MM, nb_points: int = DEFAULT_NB_POINTS,
                 ordering: str = "file", seed: int | None = 0, min_size: int = 1) -> Clustering:
    """Cluster streamlines (RAS mm) with DIPY's QuickBundles.

    Parameters
    ----------
    streamlines_rasmm : sequence of (n_i, 3) arrays
        Streamlines in mm (the metric is a distance in the units of the points).
    threshold : float
        QuickBundles' distance threshold in mm (> 0).
    nb_points : int
        Points each streamline is resampled to for the metric (>= 2).
    ordering, seed
        Visiting order (``file``, ``random`` from ``seed``, ``length``).
    min_size : int
        Clusters with fewer streamlines are dropped into "other" (label -1).
    """
    from dipy.segment.clustering import QuickBundles
    from dipy.segment.featurespeed import ResampleFeature
    from dipy.segment.metricspeed import AveragePointwiseEuclideanMetric

    check_parameters(threshold, nb_points, ordering, min_size)
    streamlines = [np.ascontiguousarray(s, dtype=np.float32) for s in streamlines_rasmm]
    n = len(streamlines)
    if n == 0:
        raise ConfigError("there are no streamlines to cluster")
    short = [i for i, s in enumerate(streamlines) if len(s) < 2]
    if short:
        raise ConfigError(f"{len(short)} streamline(s) have fewer than 2 points (first: index {short[0]}); "
                          "QuickBundles cannot resample them")
    order = visiting_order(streamlines, ordering, seed)
    metric = AveragePointwiseEuclideanMetric(ResampleFeature(nb_points=nb_points))
    cmap = QuickBundles(threshold=float(threshold), metric=metric).cluster(streamlines, ordering=order)
    # rank of each streamline in the visiting order: ties in size go to the cluster visited first
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    raw = [(np.sort(np.asarray(c.indices, dtype=np.int64)), np.asarray(c.centroid, dtype=np.float64))
           for c in cmap]
    raw.sort(key=lambda ic: (-len(ic[0]), int(rank[ic[0]].min())))
    kept = [ic for ic in raw if len(ic[0]) >= min_size]
    dropped = [ic[0] for ic in raw if len(ic[0]) < min_size]
    labels = np.full(n, -1, dtype=np.int64)
    for k, (idx, _) in enumerate(kept):
        labels[idx] = k
    other = np.sort(np.concatenate(dropped)) if dropped else np.zeros(0, dtype=np.int64)
    return Clustering(labels, [ic[0] for ic in kept], [ic[1] for ic in kept], other, float(threshold),
                      int(nb_points), ordering, seed, int(min_size), len(raw),
                      {"metric": f"AveragePointwiseEuclideanMetric(ResampleFeature(nb_points={nb_points})) "
                                 "with flipping (MDF), DIPY QuickBundles"})


# ------------------------------------------------------------------------------ agreement
def contingency(a, b) -> np.ndarray:
    """The contingency table of two labelings of the same items (rows: values of ``a``, columns: of ``b``)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"two labelings of the same items are needed, got shapes {a.shape} and {b.shape}")
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max(initial=-1) + 1, bi.max(initial=-1) + 1), dtype=np.int64)
    np.add.at(table, (ai, bi), 1)
    return table


def _pairs(x) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float((x * (x - 1) / 2).sum())


def adjusted_rand_index(a, b) -> float:
    """Adjusted Rand index of two labelings (Hubert & Arabie 1985), from their contingency table.

    1 for identical partitions (up to renaming), about 0 for chance, can be negative. Two
    trivial partitions (everything in one group, or every item alone) that agree give 1,
    as scikit-learn does.
    """
    table = contingency(a, b)
    n = int(table.sum())
    if n == 0:
        return float("nan")
    index = _pairs(table)
    rows, cols = _pairs(table.sum(axis=1)), _pairs(table.sum(axis=0))
    total = n * (n - 1) / 2
    expected = rows * cols / total if total else 0.0
    maximum = (rows + cols) / 2
    if maximum == expected:        # both partitions trivial (one cluster, or singletons), hence equal
        return 1.0
    return float((index - expected) / (maximum - expected))


def agreement(clustering: Clustering, truth: np.ndarray, names: list[str] | None = None) -> dict:
    """ARI and purity-style figures of ``clustering`` against true bundle labels.

    ``truth`` has one integer per streamline: its bundle, or ``-1`` for a streamline that
    belongs to no bundle (left out of the ARI). Streamlines folded into "other" by
    ``min_size`` count as one more cluster. Returns the ARI, the number of streamlines it
    was computed on, and per true bundle the cluster holding most of its streamlines and
    that share.
    """
    truth = np.asarray(truth, dtype=np.int64)
    if len(truth) != len(clustering.labels):
        raise ConfigError(f"{len(truth)} true labels for {len(clustering.labels)} streamlines")
    used = truth >= 0
    labels, true = clustering.labels[used], truth[used]
    result: dict = {"ari": adjusted_rand_index(labels, true) if used.any() else None,
                    "streamlines_compared": int(used.sum())}
    bundles = {}
    for b in np.unique(true):
        members = labels[true == b]
        values, counts = np.unique(members, return_counts=True)
        best = int(np.argmax(counts))
        name = names[b] if names is not None and 0 <= b < len(names) else str(int(b))
        bundles[name] = {"streamlines": int(len(members)), "clusters": int(len(values)),
                         "main_cluster": int(values[best]), "main_cluster_share": float(counts[best] / len(members))}
    result["bundles"] = bundles
    return result


# ------------------------------------------------------------------------------ picture
def cluster_figure(streamlines_rasmm, clustering: Clustering, path, truth: np.ndarray | None = None,
                   names: list[str] | None = None, title: str = "", max_streamlines: int = 20000,
                   n_colours: int = 20, seed: int = 0) -> None:
    """Three projections of the streamlines (RAS mm) coloured by cluster, biggest clusters drawn on top.

    The ``n_colours`` biggest clusters get their own colour, the others (and "other") grey.
    With ``truth`` (bundle per streamline, -1 for none), a second row shows the true bundles,
    each in the colour of the cluster holding most of its streamlines (two bundles in one
    colour: merged; a bundle of several colours above: split). At most ``max_streamlines`` are drawn (a random sample from ``seed``).
    Writes a PNG at ``path`` (a plain write: the caller stages it).
    """
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    from ..viz.figures import _pyplot

    plt = _pyplot()
    n = len(streamlines_rasmm)
    drawn = np.arange(n)
    if n > max_streamlines:
        drawn = np.sort(np.random.default_rng(seed).choice(n, max_streamlines, replace=False))
    palette = plt.get_cmap("tab20")(np.arange(20) % 20)[:, :3] if n_colours <= 20 else \
        plt.get_cmap("hsv")(np.linspace(0, 1, n_colours, endpoint=False))[:, :3]
    grey = np.array([0.6, 0.6, 0.6])
    views = [((0, 1), "axial (x-y)", "x (mm)", "y (mm)"), ((0, 2), "coronal (x-z)", "x (mm)", "z (mm)"),
             ((1, 2), "sagittal (y-z)", "y (mm)", "z (mm)")]
    rows = [("clusters", clustering.labels)]
    main = {}
    if truth is not None:   # each true bundle in the colour of the cluster holding most of its streamlines
        truth = np.asarray(truth)
        for b in np.unique(truth[truth >= 0]):
            values, counts = np.unique(clustering.labels[truth == b], return_counts=True)
            main[int(b)] = int(values[np.argmax(counts)])
        rows.append(("true bundles", np.array([main.get(int(b), -1) if b >= 0 else -1 for b in truth])))
    fig, axes = plt.subplots(len(rows), 3, figsize=(15, 5.2 * len(rows)), squeeze=False, constrained_layout=True)
    points = [np.asarray(streamlines_rasmm[i], dtype=np.float64) for i in drawn]
    every = np.concatenate(points) if points else np.zeros((1, 3))
    lo, hi = every.min(axis=0), every.max(axis=0)
    for r, (kind, labels) in enumerate(rows):
        lab = np.asarray(labels)[drawn]
        # grey first, then clusters from the smallest coloured to the biggest, so the biggest are on top
        keys = np.where((lab >= 0) & (lab < n_colours), lab, n_colours)
        order = np.argsort(-keys, kind="stable")
        colours = np.array([palette[k] if k < n_colours else grey for k in keys[order]])
        for c, (axes_pair, name, xl, yl) in enumerate(views):
            ax = axes[r, c]
            segments = [points[i][:, axes_pair] for i in order]
            ax.add_collection(LineCollection(segments, colors=colours, linewidths=0.35, alpha=0.7))
            ax.set_xlim(lo[axes_pair[0]] - 2, hi[axes_pair[0]] + 2)
            ax.set_ylim(lo[axes_pair[1]] - 2, hi[axes_pair[1]] + 2)
            ax.set_aspect("equal")
            ax.set_title(f"{kind}: {name}", fontsize=10)
            ax.set_xlabel(xl, fontsize=8), ax.set_ylabel(yl, fontsize=8)
            ax.tick_params(labelsize=7)
        if kind == "clusters":
            shown = min(n_colours, len(clustering))
            handles = [Line2D([], [], color=palette[k], lw=2, label=f"{k}: {clustering.sizes[k]}")
                       for k in range(shown)]
            rest = len(clustering.labels) - sum(clustering.sizes[:shown])
            if rest:
                handles.append(Line2D([], [], color=grey, lw=2, label=f"rest: {rest}"))
            axes[r, 2].legend(handles=handles, fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5),
                              title="cluster: size", title_fontsize=7)
        else:
            handles = [Line2D([], [], color=palette[k] if 0 <= k < n_colours else grey, lw=2,
                              label=f"{names[b] if names and b < len(names) else b} (cluster {k})")
                       for b, k in main.items()]
            if (truth < 0).any():
                handles.append(Line2D([], [], color=grey, lw=2, label="IC / NC"))
            axes[r, 2].legend(handles=handles, fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    drawn_note = f", {len(drawn)} of {n} drawn" if len(drawn) < n else ""
    fig.suptitle(f"{title}{' - ' if title else ''}QuickBundles {clustering.threshold:g} mm: "
                 f"{len(clustering)} clusters of {n} streamlines{drawn_note}", fontsize=11)
    fig.savefig(path, dpi=80, format="png")
    plt.close(fig)
