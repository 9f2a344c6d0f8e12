"""``difftract cluster``: QuickBundles clusters of a tractogram, and their agreement with a phantom's bundles."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import re
import time
from pathlib import Path

import numpy as np

from ..errors import InputError

log = logging.getLogger("difftract")

EPILOG = """\
QuickBundles is DIPY's (dipy.segment.clustering.QuickBundles) with its default metric: streamlines
in RAS mm resampled to --nb-points points (12, DIPY's "MDF_12points"), average pointwise Euclidean
distance, direct or flipped, whichever is smaller. DIPY has no default threshold; 10 mm is the
value of its documentation's example and tutorial. QuickBundles visits streamlines one by one, so
its clusters depend on the order: --ordering file (as stored), random (a permutation from --seed)
or length (longest first). Clusters are numbered biggest first.

outputs (in DIR, which appears only once complete):
  cluster_000.EXT ...   the streamlines of each cluster (EXT: the input's format or --format), with
                        the input's per-streamline data and their index in the input (source_index)
  other.EXT             the streamlines of clusters smaller than --min-size (only when there are any)
  centroids.EXT         one centroid per cluster (cluster number and size per streamline)
  clusters.csv          streamline,cluster[,bundle]: each input streamline's cluster (-1: other)
  clusters.json         parameters, number of clusters, sizes, member indices, files, agreement
                        with the phantom (ARI) and the provenance record
  clusters.png          three projections coloured by cluster (biggest 20 in colour), and with
                        --phantom the true bundles below

--phantom DIR: the adjusted Rand index (ARI) between the clusters and the true bundles, on the
streamlines that belong to a bundle: a tractogram carrying a per-streamline 'bundle' label (the
phantom's tractogram.trk) is compared on all of them; any other on the Tractometer's valid
streamlines (as `difftract score`), its invalid (IC) and no-connection (NC) streamlines counted
apart. Streamlines folded into 'other' by --min-size count as one more cluster.

examples:
  difftract cluster phantom/tractogram.trk --out clusters_gt --phantom phantom
  difftract cluster tracks.trx --out clusters --threshold 15 --min-size 10
  difftract cluster tracks.tck --reference phantom/mask.nii.gz --out clusters --format trk
"""


def add_parser(sub) -> None:
    from ..eval.clusters import DEFAULT_NB_POINTS, DEFAULT_THRESHOLD_MM, ORDERINGS

    p = sub.add_parser("cluster", help="QuickBundles clusters of a tractogram (and their ARI against a phantom)",
                       description="Cluster a tractogram with DIPY's QuickBundles: one file per cluster, the "
                                   "centroids, sizes, each streamline's cluster and a picture; with --phantom, "
                                   "the agreement of the clusters with the true bundles (adjusted Rand index).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tractogram", type=Path, metavar="TRACTO", help=".trk, .tck or .trx file")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="output directory (must not exist unless --force)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD_MM, metavar="MM",
                   help="QuickBundles distance threshold in mm (default: %(default)g)")
    p.add_argument("--nb-points", type=int, default=DEFAULT_NB_POINTS,
                   help="points each streamline is resampled to for the distance (default: %(default)s)")
    p.add_argument("--ordering", choices=ORDERINGS, default="file",
                   help="order in which QuickBundles visits the streamlines (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of --ordering random and of the picture's sample of streamlines (default: 0)")
    p.add_argument("--min-size", type=int, default=1, metavar="N",
                   help="clusters with fewer streamlines go to other.EXT (label -1) (default: %(default)s)")
    p.add_argument("--format", choices=("trk", "tck", "trx"),
                   help="format of the cluster and centroid files (default: the input's)")
    p.add_argument("--phantom", type=Path, metavar="DIR",
                   help="phantom directory (or its gt/scoring.json): report the ARI against its bundles")
    p.add_argument("--reference", type=Path, metavar="IMG",
                   help="grid image for .tck files (default: the phantom's mask with --phantom)")
    p.add_argument("--force", action="store_true", help="replace DIR if it exists")
    p.set_defaults(func=cmd_cluster)


def _truth(tractogram, config, path: Path) -> tuple[np.ndarray, dict]:
    """True bundle per streamline (-1: none), and how it was found, with the Tractometer's counts."""
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


def cmd_cluster(args: argparse.Namespace) -> int:
    from ..eval.clusters import agreement, check_parameters, cluster_figure, quickbundles
    from ..io.atomic import atomic_directory, check_output
    from ..io.sidecar import provenance
    from ..io.tractogram import Tractogram, load_tractogram, save_tractogram

    check_parameters(args.threshold, args.nb_points, args.ordering, args.min_size)
    check_output(args.out, args.force, inputs=[args.tractogram])
    config = None
    reference = args.reference
    if args.phantom is not None:
        from ..eval.tractometer import load_scoring

        config = load_scoring(args.phantom)
        if reference is None:
            mask = config.path.parent.parent / "mask.nii.gz"
            reference = mask if mask.is_file() else config.reference
    tractogram = load_tractogram(args.tractogram, reference=reference)
    if len(tractogram) == 0:
        raise InputError(args.tractogram, "holds no streamlines; there is nothing to cluster")
    if config is not None and (tuple(tractogram.dimensions) != config.shape
                               or not np.allclose(tractogram.affine, config.affine, atol=1e-4)):
        raise InputError(args.tractogram, f"is on grid {tuple(tractogram.dimensions)} but the ground truth of "
                                          f"{config.path} is on {config.shape} (or their affines differ)")
    ext = "." + (args.format or args.tractogram.suffix.lower().lstrip("."))
    start = time.perf_counter()
    rasmm = tractogram.to_rasmm()
    short = np.flatnonzero(np.asarray([len(s) for s in rasmm]) < 2)
    if short.size:
        raise InputError(args.tractogram, f"{short.size} streamline(s) have fewer than 2 points (first: index "
                                          f"{short[0]}); QuickBundles cannot resample them")
    result = quickbundles(rasmm, threshold=args.threshold, nb_points=args.nb_points,
                          ordering=args.ordering, seed=args.seed, min_size=args.min_size)
    seconds = time.perf_counter() - start

    truth, truth_info, scores = None, None, None
    if config is not None:
        truth, truth_info = _truth(tractogram, config, args.tractogram)
        scores = {**agreement(result, truth, config.names), **truth_info}

    params = {"threshold_mm": result.threshold, "nb_points": result.nb_points, "metric": result.params["metric"],
              "ordering": result.ordering, "seed": args.seed, "min_size": result.min_size,
              "format": ext.lstrip("."), "phantom": args.phantom, "reference": reference}
    width = max(3, len(str(len(result) - 1)))
    names = [f"cluster_{k:0{width}d}{ext}" for k in range(len(result))]
    record = {"tractogram": args.tractogram, "streamlines": len(tractogram), **params,
              "n_clusters": len(result), "n_clusters_before_min_size": result.n_clusters_before_min_size,
              "sizes": result.sizes, "other_size": int(len(result.other)),
              "files": names, "other_file": f"other{ext}" if len(result.other) else None,
              "centroids_file": f"centroids{ext}", "seconds": round(seconds, 3),
              "agreement": scores,
              "indices": [i.tolist() for i in result.indices], "other_indices": result.other.tolist(),
              "provenance": provenance("cluster", params, seed=args.seed,
                                       inputs=[args.tractogram] + ([config.path] if config else []))}

    keep_data = ext != ".tck"     # .tck stores no per-streamline data

    def subset(idx: np.ndarray) -> Tractogram:
        dps = {}
        if keep_data:
            dps = {k: v[idx] for k, v in tractogram.data_per_streamline.items()}
            dps["source_index"] = idx.astype(np.float32 if ext == ".trk" else np.int64)
        return Tractogram(tractogram.streamlines[idx], tractogram.affine, tractogram.dimensions,
                          tractogram.voxel_sizes, dps)

    with atomic_directory(args.out, args.force) as work:
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
                       names=config.names if config else None, title=args.tractogram.name, seed=args.seed)

    _print_summary(args, len(tractogram), result, seconds, scores, config)
    return 0


def _dump(record: dict) -> str:
    """Indented JSON with every list of numbers or strings on one line (a tractogram has many streamlines)."""
    from ..io.sidecar import _jsonable

    text = json.dumps(_jsonable(record), indent=2)
    flat = re.compile(r"\[\n\s*((?:[^\[\]{}\n]*,\n\s*)*[^\[\]{}\n]*)\n\s*\]")
    return flat.sub(lambda m: "[" + re.sub(r",\n\s*", ", ", m.group(1)) + "]", text) + "\n"


def _print_summary(args, n: int, result, seconds: float, scores: dict | None, config) -> None:
    sizes = ", ".join(str(s) for s in result.sizes[:10]) + (", ..." if len(result) > 10 else "")
    print(f"{args.tractogram}: {n} streamlines -> {len(result)} clusters (QuickBundles {result.threshold:g} mm, "
          f"{result.nb_points} points, ordering {result.ordering}) in {seconds:.2f} s -> {args.out}")
    print(f"  sizes: {sizes}" + (f"; {len(result.other)} streamlines in other "
                                 f"({result.n_clusters_before_min_size - len(result)} clusters "
                                 f"< {result.min_size})" if len(result.other) else ""))
    if scores is None:
        return
    t = scores["tractometer"]
    ari = "n/a (no streamline belongs to a bundle)" if scores["ari"] is None else f"{scores['ari']:.3f}"
    print(f"  ARI against the true bundles of {config.path}: {ari} on {scores['streamlines_compared']} streamlines "
          f"(Tractometer: VS {t['VS']}, IC {t['IC']}, NC {t['NC']})")
    print(f"  {'bundle':<16}{'streamlines':>12}{'clusters':>10}{'main':>6}{'share':>8}")
    for name, b in scores["bundles"].items():
        print(f"  {name:<16}{b['streamlines']:>12}{b['clusters']:>10}{b['main_cluster']:>6}"
              f"{b['main_cluster_share']:>8.3f}")
