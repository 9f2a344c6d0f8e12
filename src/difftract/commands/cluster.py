"""``difftract cluster``: parse the options and call :func:`difftract.pipeline.cluster.cluster_tractogram`."""

from __future__ import annotations

import argparse
from pathlib import Path

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
    from ..eval.clusters import ORDERINGS
    from ..pipeline.cluster import FORMATS, ClusterOptions

    d = ClusterOptions()
    p = sub.add_parser("cluster", help="QuickBundles clusters of a tractogram (and their ARI against a phantom)",
                       description="Cluster a tractogram with DIPY's QuickBundles: one file per cluster, the "
                                   "centroids, sizes, each streamline's cluster and a picture; with --phantom, "
                                   "the agreement of the clusters with the true bundles (adjusted Rand index).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tractogram", type=Path, metavar="TRACTO", help=".trk, .tck or .trx file")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="output directory (must not exist unless --force)")
    p.add_argument("--threshold", type=float, default=d.threshold, metavar="MM",
                   help="QuickBundles distance threshold in mm (default: %(default)g)")
    p.add_argument("--nb-points", type=int, default=d.nb_points,
                   help="points each streamline is resampled to for the distance (default: %(default)s)")
    p.add_argument("--ordering", choices=ORDERINGS, default=d.ordering,
                   help="order in which QuickBundles visits the streamlines (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seed of --ordering random and of the picture's sample of streamlines (default: 0)")
    p.add_argument("--min-size", type=int, default=d.min_size, metavar="N",
                   help="clusters with fewer streamlines go to other.EXT (label -1) (default: %(default)s)")
    p.add_argument("--format", choices=FORMATS,
                   help="format of the cluster and centroid files (default: the input's)")
    p.add_argument("--phantom", type=Path, metavar="DIR",
                   help="phantom directory (or its gt/scoring.json): report the ARI against its bundles")
    p.add_argument("--reference", type=Path, metavar="IMG",
                   help="grid image for .tck files (default: the phantom's mask with --phantom)")
    p.add_argument("--force", action="store_true", help="replace DIR if it exists")
    p.set_defaults(func=cmd_cluster)


def cmd_cluster(args: argparse.Namespace) -> int:
    from ..pipeline import Console
    from ..pipeline.cluster import ClusterOptions, cluster_tractogram

    options = ClusterOptions(threshold=args.threshold, nb_points=args.nb_points, ordering=args.ordering,
                             seed=args.seed, min_size=args.min_size, format=args.format)
    cluster_tractogram(args.tractogram, args.out, options, phantom=args.phantom, reference=args.reference,
                       console=Console(quiet=args.quiet), force=args.force)
    return 0
