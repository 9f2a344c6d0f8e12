"""Clustering as a pipeline stage: QuickBundles of a tractogram file -> a folder of clusters.

``difftract cluster`` parses its options into :class:`ClusterOptions` and calls
:func:`cluster_tractogram`, which reads the tractogram (on a phantom's grid when one is
given), clusters it with DIPY's QuickBundles (:mod:`difftract.eval.clusters`), writes one
file per cluster, the centroids, ``clusters.csv``, ``clusters.json`` and ``clusters.png``
into a folder that appears only once complete, and with a phantom reports the adjusted
Rand index of the clusters against its bundles.

>>> from difftract.pipeline import ClusterOptions, cluster_tractogram
>>> found = cluster_tractogram("phantom/tractogram.trk", "clusters", phantom="phantom")   # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InputError
from ..eval.clusters import DEFAULT_NB_POINTS, DEFAULT_THRESHOLD_MM, Clustering, check_parameters
from ..console import Console

log = logging.getLogger("difftract")
FORMATS = ("trk", "tck", "trx")


@dataclass(frozen=True)
class ClusterOptions:
    """How QuickBundles runs and what it writes (checked when made, before any file is read).

    Attributes
    ----------
    threshold : float
        Distance threshold, mm.
    nb_points : int
        Points each streamline is resampled to for the distance.
    ordering : str
        ``file``, ``random`` (a permutation from ``seed``) or ``length`` (longest first).
    seed : int
        Seed of the random ordering and of the picture's sample of streamlines.
    min_size : int
        Smaller clusters are folded into ``other`` (label -1).
    format : str, optional
        ``trk``, ``tck`` or ``trx`` for the cluster and centroid files (default: the input's).
    """

    threshold: float = DEFAULT_THRESHOLD_MM
    nb_points: int = DEFAULT_NB_POINTS
    ordering: str = "file"
    seed: int = 0
    min_size: int = 1
    format: str | None = None

    def __post_init__(self):
        check_parameters(self.threshold, self.nb_points, self.ordering, self.min_size)
        if self.format is not None and self.format not in FORMATS:
            raise ConfigError(f"unknown tractogram format {self.format!r}; use one of {', '.join(FORMATS)}")


@dataclass
class ClusterResult:
    """What :func:`cluster_tractogram` found and wrote.

    Attributes
    ----------
    clustering : Clustering
        QuickBundles' clusters, numbered biggest first.
    agreement : dict or None
        The ARI against the phantom's bundles and how the true bundles were found (with a phantom).
    record : dict
        The content of ``clusters.json``.
    out : Path
        The folder written.
    """

    clustering: Clustering
    agreement: dict | None
    record: dict
    out: Path


def cluster_tractogram(tractogram: str | Path, out: str | Path, options: ClusterOptions = ClusterOptions(), *,
                       phantom: str | Path | None = None, reference: str | Path | None = None,
                       console: Console = Console(), force: bool = False) -> ClusterResult:
    """Cluster ``tractogram`` into the folder ``out`` (see ``difftract cluster --help`` for the files).

    ``phantom`` (a phantom directory, its ``gt/`` or a ``scoring.json``) adds the agreement
    with its bundles, and its mask is the grid of a ``.tck`` unless ``reference`` is given.
    """
    from ..eval.clusters import agreement, quickbundles
    from ..io.atomic import check_output
    from ..io.sidecar import provenance
    from ..io.tractogram import load_tractogram

    tractogram, out = Path(tractogram), Path(out)
    check_output(out, force, inputs=[tractogram])
    config = None
    if phantom is not None:
        from ..eval.tractometer import load_scoring

        config = load_scoring(phantom)
        if reference is None:
            mask = config.path.parent.parent / "mask.nii.gz"
            reference = mask if mask.is_file() else config.reference
    loaded = load_tractogram(tractogram, reference=reference)
    if len(loaded) == 0:
        raise InputError(tractogram, "holds no streamlines; there is nothing to cluster")
    if config is not None and (tuple(loaded.dimensions) != config.shape
                               or not np.allclose(loaded.affine, config.affine, atol=1e-4)):
        raise InputError(tractogram, f"is on grid {tuple(loaded.dimensions)} but the ground truth of "
                                     f"{config.path} is on {config.shape} (or their affines differ)")
    ext = "." + (options.format or tractogram.suffix.lower().lstrip("."))
    start = time.perf_counter()
    rasmm = loaded.to_rasmm()
    short = np.flatnonzero(np.asarray([len(s) for s in rasmm]) < 2)
    if short.size:
        raise InputError(tractogram, f"{short.size} streamline(s) have fewer than 2 points (first: index "
                                     f"{short[0]}); QuickBundles cannot resample them")
    result = quickbundles(rasmm, threshold=options.threshold, nb_points=options.nb_points,
                          ordering=options.ordering, seed=options.seed, min_size=options.min_size)
    seconds = time.perf_counter() - start

    truth, scores = None, None
    if config is not None:
        truth, truth_info = true_bundles(loaded, config, tractogram)
        scores = {**agreement(result, truth, config.names), **truth_info}

    params = {"threshold_mm": result.threshold, "nb_points": result.nb_points, "metric": result.params["metric"],
              "ordering": result.ordering, "seed": options.seed, "min_size": result.min_size,
              "format": ext.lstrip("."), "phantom": phantom, "reference": reference}
    width = max(3, len(str(len(result) - 1)))
    names = [f"cluster_{k:0{width}d}{ext}" for k in range(len(result))]
    record = {"tractogram": tractogram, "streamlines": len(loaded), **params,
              "n_clusters": len(result), "n_clusters_before_min_size": result.n_clusters_before_min_size,
              "sizes": result.sizes, "other_size": int(len(result.other)),
              "files": names, "other_file": f"other{ext}" if len(result.other) else None,
              "centroids_file": f"centroids{ext}", "seconds": round(seconds, 3),
              "agreement": scores,
              "indices": [i.tolist() for i in result.indices], "other_indices": result.other.tolist(),
              "provenance": provenance("cluster", params, seed=options.seed,
                                       inputs=[tractogram] + ([config.path] if config else []))}
    _write(out, loaded, rasmm, result, names, ext, record, truth, config, options.seed, tractogram.name, force)
    for line in summary_lines(tractogram, out, len(loaded), result, seconds, scores, config):
        console.say(line)
    return ClusterResult(result, scores, record, out)


def true_bundles(tractogram, config, path: Path) -> tuple[np.ndarray, dict]:
    """True bundle per streamline (-1: none), and how it was found, with the Tractometer's counts.

    The phantom's own tractogram carries a per-streamline ``bundle`` index: those labels are
    used. Any other is segmented as ``difftract score`` does, and only its valid
    streamlines have a bundle.
    """
    from ..eval.tractometer import segment

    seg = segment(tractogram.streamlines, config)
    by_tractometer = np.full(len(tractogram), -1, dtype=np.int64)
    for k, name in enumerate(config.names):
        by_tractometer[seg.vs[name]] = k
    counts = {"VS": int((by_tractometer >= 0).sum()), "IC": int(sum(len(i) for _, i in seg.ic)),
              "NC": int(len(seg.nc))}
    stored = tractogram.data_per_streamline.get("bundle")
    if stored is not None:
        stored = np.asarray(stored, dtype=np.float64).reshape(len(tractogram), -1)[:, 0]
        if np.all(np.isfinite(stored)) and np.all(stored == np.round(stored)) and \
                np.all((stored >= 0) & (stored < len(config.names))):
            labels = stored.astype(np.int64)
            agree = float(np.mean(labels == by_tractometer)) if len(labels) else 1.0
            return labels, {"source": f"the per-streamline 'bundle' label of {path.name} (indices into the "
                                      f"phantom's bundles, in the order of scoring.json)",
                            "tractometer": counts, "stored_label_is_tractometer_bundle": agree}
        log.warning("%s: its per-streamline 'bundle' values are not bundle indices of %s; "
                    "using the Tractometer's valid streamlines instead", path, config.path)
    return by_tractometer, {"source": "the Tractometer's valid streamlines (as `difftract score`); IC and NC "
                                      "streamlines are not compared", "tractometer": counts}


def _write(out: Path, tractogram, rasmm, result, names: list[str], ext: str, record: dict, truth, config,
           seed: int, title: str, force: bool) -> None:
    """Every file of the folder ``out``, staged and put in place together."""
    from ..eval.clusters import cluster_figure
    from ..io.atomic import atomic_directory
    from ..io.tractogram import Tractogram, save_tractogram

    keep_data = ext != ".tck"     # .tck stores no per-streamline data

    def subset(idx: np.ndarray) -> Tractogram:
        dps = {}
        if keep_data:
            dps = {k: v[idx] for k, v in tractogram.data_per_streamline.items()}
            dps["source_index"] = idx.astype(np.float32 if ext == ".trk" else np.int64)
        return Tractogram(tractogram.streamlines[idx], tractogram.affine, tractogram.dimensions,
                          tractogram.voxel_sizes, dps)

    with atomic_directory(out, force) as work:
        for name, idx in zip(names, result.indices):
            save_tractogram(subset(idx), work / name)
        if len(result.other):
            save_tractogram(subset(result.other), work / f"other{ext}")
        centroid_data = {"cluster": np.arange(len(result), dtype=np.float32),
                         "size": np.asarray(result.sizes, dtype=np.float32)} if keep_data else {}
        save_tractogram(Tractogram.from_rasmm(result.centroids, tractogram, centroid_data), work / f"centroids{ext}")
        with open(work / "clusters.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["streamline", "cluster"] + (["bundle"] if truth is not None else []))
            for i, label in enumerate(result.labels.tolist()):
                row = [i, label]
                if truth is not None:
                    row.append(config.names[truth[i]] if truth[i] >= 0 else "")
                writer.writerow(row)
        (work / "clusters.json").write_text(_dump(record))
        cluster_figure(rasmm, result, work / "clusters.png", truth=truth,
                       names=config.names if config else None, title=title, seed=seed)


def _dump(record: dict) -> str:
    """Indented JSON with every list of numbers or strings on one line (a tractogram has many streamlines)."""
    from ..io.sidecar import _jsonable

    text = json.dumps(_jsonable(record), indent=2)
    flat = re.compile(r"\[\n\s*((?:[^\[\]{}\n]*,\n\s*)*[^\[\]{}\n]*)\n\s*\]")
    return flat.sub(lambda m: "[" + re.sub(r",\n\s*", ", ", m.group(1)) + "]", text) + "\n"


def summary_lines(tractogram: Path, out: Path, n: int, result, seconds: float, scores: dict | None,
                  config) -> list[str]:
    """The clustering for people: counts, sizes, and with a phantom the ARI and a row per bundle."""
    sizes = ", ".join(str(s) for s in result.sizes[:10]) + (", ..." if len(result) > 10 else "")
    lines = [f"{tractogram}: {n} streamlines -> {len(result)} clusters (QuickBundles {result.threshold:g} mm, "
             f"{result.nb_points} points, ordering {result.ordering}) in {seconds:.2f} s -> {out}",
             f"  sizes: {sizes}" + (f"; {len(result.other)} streamlines in other "
                                    f"({result.n_clusters_before_min_size - len(result)} clusters "
                                    f"< {result.min_size})" if len(result.other) else "")]
    if scores is None:
        return lines
    t = scores["tractometer"]
    ari = "n/a (no streamline belongs to a bundle)" if scores["ari"] is None else f"{scores['ari']:.3f}"
    lines.append(f"  ARI against the true bundles of {config.path}: {ari} on {scores['streamlines_compared']} "
                 f"streamlines (Tractometer: VS {t['VS']}, IC {t['IC']}, NC {t['NC']})")
    lines.append(f"  {'bundle':<16}{'streamlines':>12}{'clusters':>10}{'main':>6}{'share':>8}")
    for name, b in scores["bundles"].items():
        lines.append(f"  {name:<16}{b['streamlines']:>12}{b['clusters']:>10}{b['main_cluster']:>6}"
                     f"{b['main_cluster_share']:>8.3f}")
    return lines
