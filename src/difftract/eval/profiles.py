"""Tractometry: FA and MD profiles along each bundle, as pyAFQ's tract profiles.

DIPY computes them (``dipy.stats.analysis.afq_profile``, the method of Yeatman et al. 2012
that pyAFQ uses): each streamline is resampled to ``n_points`` nodes, the map is read at the
nodes by trilinear interpolation, and each node's values are averaged across streamlines
with DIPY's ``gaussian_weights`` (weights falling with the Mahalanobis distance of a
streamline's node to the bundle's core; pyAFQ's default), which :func:`gaussian_weights`
computes in one batch. This module otherwise decides which streamlines make a bundle and
which way they run:

- streamlines are oriented head -> tail before profiling, by the bundle's ROIs when it has
  them (``dipy.tracking.streamline.orient_by_rois``), else to the bundle's first streamline
  (``orient_by_streamline``); with ROIs node 0 is at the head for every subject, so profiles
  compare across subjects;
- with ground truth the bundles are the Tractometer's valid streamlines
  (:func:`difftract.eval.tractometer.segment`), so a tracked tractogram is profiled per
  ground-truth bundle;
- where DIPY's Gaussian weights cannot be computed (too few streamlines for a 3x3
  covariance, or a degenerate one giving non-finite weights) the bundle falls back to the
  plain mean across streamlines, and says so (``"weights": "mean"``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

N_POINTS = 20
MD_SCALE = 1e3       # MD is reported in 10^-3 mm^2/s in tables and plots (CSV keeps mm^2/s)


def orient(streamlines, head: np.ndarray | None = None, tail: np.ndarray | None = None) -> list[np.ndarray]:
    """Streamlines (voxel space) turned to run head -> tail (ROI masks on their grid), else as the first one."""
    from dipy.tracking.streamline import orient_by_rois, orient_by_streamline

    streamlines = [np.asarray(s, dtype=np.float64) for s in streamlines]
    if not streamlines:
        return []
    if head is not None and tail is not None and head.any() and tail.any():
        return list(orient_by_rois(streamlines, np.eye(4), head, tail))
    return list(orient_by_streamline(streamlines, streamlines[0]))


def gaussian_weights(bundle: list[np.ndarray], n_points: int = N_POINTS) -> np.ndarray:
    """DIPY's ``gaussian_weights`` (pyAFQ's default), computed for all nodes and streamlines at once.

    The same weights, to rounding: each streamline is resampled to ``n_points`` nodes; at each
    node the weight is the inverse Mahalanobis distance of the streamline's node to the nodes'
    mean, with the nodes' (ddof 0) covariance, normalised to sum to 1 over streamlines. As in
    DIPY, the quadratic form uses the inverse of the covariance's upper triangle, and a node
    where every streamline is at one point weighs them equally. DIPY loops over streamlines
    and nodes in Python, inverting a 3x3 matrix at each: seconds per bundle of thousands of
    streamlines, which dominated a report.

    Returns
    -------
    (n_streamlines, n_points) array (one streamline: all ones, where DIPY returns ``[1]``).

    Raises
    ------
    numpy.linalg.LinAlgError
        Where a node's covariance is singular, as DIPY does.
    """
    from dipy.tracking.streamline import set_number_of_points

    nodes = np.stack(set_number_of_points([np.asarray(s, np.float64) for s in bundle], nb_points=n_points))
    if len(nodes) == 1:
        return np.ones((1, n_points))
    delta = nodes - nodes.mean(axis=0)                                       # (S, N, 3)
    upper = np.triu(np.einsum("sni,snj->nij", delta, delta) / len(nodes))   # DIPY's upper triangle
    flat = np.all(np.abs(upper) <= 1e-8, axis=(1, 2))                       # np.allclose(c, 0)
    inverse = np.linalg.inv(np.where(flat[:, None, None], np.eye(3), upper))
    with np.errstate(invalid="ignore", divide="ignore"):
        distance = np.sqrt(np.einsum("sni,nij,snj->sn", delta, inverse, delta))
        distance[:, flat] = len(nodes)
        w = 1.0 / distance
        return w / w.sum(axis=0)


def _weights(bundle: list[np.ndarray], n_points: int) -> tuple[np.ndarray | None, str]:
    """Gaussian weights (n_streamlines, n_points), or None (plain mean) where they are not finite."""
    if len(bundle) < 4:       # a 3x3 node covariance needs at least 4 streamlines to be invertible
        return None, "mean"
    try:
        w = gaussian_weights(bundle, n_points)
    except (np.linalg.LinAlgError, ValueError):
        return None, "mean"
    if not np.all(np.isfinite(w)):       # e.g. a streamline on a node's mean: distance 0
        return None, "mean"
    return w, "gaussian"


def profile(volume: np.ndarray, bundle: list[np.ndarray], affine: np.ndarray | None = None,
            n_points: int = N_POINTS, weights: np.ndarray | None = None) -> np.ndarray:
    """One map's profile along an oriented bundle: DIPY's ``afq_profile`` (NaNs in the map read as 0)."""
    from dipy.stats.analysis import afq_profile

    data = np.nan_to_num(np.asarray(volume, dtype=np.float64))
    return np.asarray(afq_profile(data, bundle, affine, n_points=n_points, weights=weights), dtype=np.float64)


def bundle_profiles(streamlines_by_bundle: dict, fa: np.ndarray, md: np.ndarray, affine: np.ndarray | None = None,
                    n_points: int = N_POINTS, rois: dict | None = None) -> dict:
    """FA and MD profiles of each bundle.

    Parameters
    ----------
    streamlines_by_bundle : dict
        name -> streamlines; in voxel space (difftract's convention) with ``affine`` None, or in
        the space ``affine`` maps voxel indices to (e.g. RAS mm with the image's affine), as DIPY.
    fa, md : (X, Y, Z) arrays on the same grid.
    rois : dict, optional
        name -> (head, tail) boolean masks on the grid: orient each bundle head -> tail.
        ``rois`` with ``affine`` not None is refused (the masks are read in voxel space).

    Returns
    -------
    dict name -> {"fa": (n_points,), "md": (n_points,), "n": streamlines, "weights": "gaussian"|"mean"};
    an empty bundle has n = 0 and NaN profiles.
    """
    if rois and affine is not None and not np.allclose(affine, np.eye(4)):
        raise ValueError("orienting by ROIs needs voxel-space streamlines (affine None)")
    out = {}
    for name, streamlines in streamlines_by_bundle.items():
        head, tail = (rois or {}).get(name, (None, None))
        bundle = orient([s for s in streamlines if len(s) > 1], head, tail)
        if not bundle:
            out[name] = {"fa": np.full(n_points, np.nan), "md": np.full(n_points, np.nan), "n": 0, "weights": "mean"}
            continue
        w, kind = _weights(bundle, n_points)
        out[name] = {"fa": profile(fa, bundle, affine, n_points, w), "md": profile(md, bundle, affine, n_points, w),
                     "n": len(bundle), "weights": kind}
    return out


def tractometry(streamlines, config, fa: np.ndarray, md: np.ndarray, n_points: int = N_POINTS,
                reference: dict | None = None) -> dict:
    """Profiles of a tracked tractogram (voxel space) per ground-truth bundle of a ``ScoringConfig``.

    Each bundle is profiled on its valid streamlines (the Tractometer's VS), oriented from
    the bundle's head ROI to its tail ROI. ``reference`` (from :func:`truth_profiles`) is
    attached to each bundle's entry as ``"reference"`` for comparison.
    """
    from .tractometer import segment

    seg = segment(streamlines, config)
    by_bundle = {b.name: [streamlines[i] for i in seg.vs[b.name]] for b in config.bundles}
    rois = {b.name: (b.head, b.tail) for b in config.bundles}
    out = bundle_profiles(by_bundle, fa, md, None, n_points, rois)
    for name, p in out.items():
        if reference and name in reference:
            p["reference"] = reference[name]
    return out


def truth_profiles(config, fa: np.ndarray, md: np.ndarray, n_points: int = N_POINTS) -> dict | None:
    """The same profiles on the ground-truth streamlines (``gt/bundles/NAME.trk`` beside ``scoring.json``).

    None when a bundle's file is missing (a scoring configuration need not come with streamlines).
    """
    from ..io.tractogram import load_tractogram

    files = {b.name: config.path.parent / "bundles" / f"{b.name}.trk" for b in config.bundles}
    if not all(f.is_file() for f in files.values()):
        return None
    by_bundle = {name: list(load_tractogram(f, reference=(config.affine, config.shape)).streamlines)
                 for name, f in files.items()}
    rois = {b.name: (b.head, b.tail) for b in config.bundles}
    return bundle_profiles(by_bundle, fa, md, None, n_points, rois)


def _means(p: dict) -> dict:
    return {"n": p["n"], "fa": float(np.mean(p["fa"])) if p["n"] else float("nan"),
            "md": float(np.mean(p["md"])) if p["n"] else float("nan")}


def summary(profiles: dict) -> dict:
    """name -> {"n", "fa", "md"[, "reference"]}: streamlines and each profile's mean over its nodes."""
    out = {}
    for name, p in profiles.items():
        out[name] = _means(p)
        if p.get("reference"):
            out[name]["reference"] = _means(p["reference"])
    return out


CSV_COLUMNS = ("method", "bundle", "node", "streamlines", "weights", "fa", "md_mm2_s",
               "gt_streamlines", "gt_fa", "gt_md_mm2_s")


def _value(x) -> str:
    return "" if x is None or not np.isfinite(x) else f"{x:.6g}"


def profiles_csv(profiles_by_method: dict) -> str:
    """Long-format CSV text: one row per method x bundle x node (MD in mm^2/s; missing values empty).

    The ``gt_`` columns hold the ground-truth streamlines' profile where a bundle carries one.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for method, profiles in profiles_by_method.items():
        for name, p in profiles.items():
            ref = p.get("reference")
            for node in range(len(p["fa"])):
                gt = [ref["n"], _value(ref["fa"][node]), _value(ref["md"][node])] if ref else ["", "", ""]
                writer.writerow([method, name, node, p["n"], p["weights"], _value(p["fa"][node]),
                                 _value(p["md"][node]), *gt])
    return buffer.getvalue()


def write_profiles_csv(path: str | Path, profiles_by_method: dict, force: bool = False,
                       provenance: dict | None = None) -> Path:
    """Write :func:`profiles_csv` atomically, with a JSON sidecar (``provenance`` or a minimal record)."""
    from ..io.atomic import atomic_file
    from ..io.sidecar import provenance as make_provenance
    from ..io.sidecar import write_sidecar

    path = Path(path)
    with atomic_file(path, force=force) as tmp:
        tmp.write_text(profiles_csv(profiles_by_method), encoding="utf-8")
    record = provenance or make_provenance("tractometry", {})
    write_sidecar(path, {**record, "columns": list(CSV_COLUMNS),
                         "description": "FA and MD along each bundle (DIPY afq_profile, Gaussian weights), node 0 "
                                        "at the bundle's head ROI; MD in mm^2/s"}, force=force)
    return path
