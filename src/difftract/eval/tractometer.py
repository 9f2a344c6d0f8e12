"""The Tractometer: connectivity and volume scores of a tractogram against ground truth.

The numbers are those of scilpy 2.3.0's ``scil_tractogram_segment_with_ROI_and_score``
with ``--compute_ic --unique`` on the same inputs:

- a streamline is a valid streamline (VS) of a bundle when its first point lies in the
  bundle's head ROI and its last in the tail ROI, or the reverse; bundles are tried in
  the order of the configuration and a streamline goes to the first that fits;
- the rest joining any other pair of ROIs (sorted by file name, the bundles' own pairs
  excluded) are invalid connections (IC), again first pair first; the others are no
  connection (NC). Two ends in the same ROI make no connection;
- per bundle, the voxels its VS traverse (:mod:`difftract.eval.traversal`) against its
  ground-truth mask: OL = TP / |GT|, OR_pct_vs = FP / |recovered|, OR_pct_gt = FP / |GT|,
  F1 (the Dice score); a bundle without VS scores zeros and counts in the means.

Endpoints are looked up as scilpy does (corner origin, truncated, nearest voxel off the
grid). The configuration is scilpy's (``head``, ``tail``, ``gt_mask``; paths relative to
the ``gt`` directory), which a difftract phantom writes as ``gt/scoring.json``.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.nifti import load_nifti
from ..io.sidecar import data_stem
from .traversal import endpoint_voxels, to_corner, traversed_voxels

SUPPORTED_KEYS = {"head", "tail", "gt_mask"}


@dataclass
class BundleRegions:
    """One ground-truth bundle: its endpoint ROIs and (optionally) its voxel mask."""

    name: str
    head: np.ndarray          # bool (X, Y, Z)
    tail: np.ndarray
    gt_mask: np.ndarray | None
    head_file: str            # paths as written in the configuration, joined to gt_dir
    tail_file: str


@dataclass
class ScoringConfig:
    """All bundles of a scoring configuration, on one grid."""

    bundles: list[BundleRegions]
    shape: tuple[int, int, int]
    affine: np.ndarray
    path: Path
    reference: Path           # an image of the grid, for reading .tck files

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.bundles]


def _mask(path: Path, config: Path, grid: tuple | None) -> tuple[np.ndarray, tuple]:
    if not path.exists():
        raise InputError(config, f"refers to {path}, which does not exist")
    if not path.is_file():
        raise InputError(config, f"refers to {path}, which is not a file")
    img = load_nifti(path, "mask")
    if img.ndim != 3:
        raise InputError(path, f"a mask must be 3D, got shape {img.shape}")
    this = (tuple(int(s) for s in img.shape), np.asarray(img.affine, dtype=np.float64))
    if grid is not None and (this[0] != grid[0] or not np.allclose(this[1], grid[1], atol=1e-4)):
        raise InputError(path, f"is not on the grid of the other masks ({this[0]} vs {grid[0]})")
    return np.asarray(img.dataobj) > 0, this


def load_scoring(path: str | Path, gt_dir: str | Path | None = None) -> ScoringConfig:
    """Read a scoring configuration: a phantom directory, its ``gt`` folder or a ``scoring.json``.

    Paths in the file are relative to ``gt_dir`` (default: the folder holding the file).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "gt" / "scoring.json" if (path / "gt" / "scoring.json").is_file() else path / "scoring.json"
    if not path.is_file():
        raise InputError(path, "scoring configuration not found (expected a phantom directory or scoring.json)")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"not valid JSON ({exc})") from None
    if not isinstance(config, dict) or not config:
        raise InputError(path, "expected a JSON object with one entry per bundle")
    root = Path(gt_dir) if gt_dir is not None else path.parent
    bundles, grid = [], None
    for name, entry in config.items():
        if not isinstance(entry, dict):
            raise InputError(path, f"bundle {name!r}: expected an object with head, tail and gt_mask")
        unknown = set(entry) - SUPPORTED_KEYS
        if unknown:
            raise InputError(path, f"bundle {name!r}: unsupported key(s) {sorted(unknown)}; difftract scores with "
                                   f"{sorted(SUPPORTED_KEYS)} (scilpy's head/tail configuration)")
        if "head" not in entry or "tail" not in entry:
            raise InputError(path, f"bundle {name!r} needs both 'head' and 'tail'")
        for key, value in entry.items():
            if not isinstance(value, str) or not value:
                raise InputError(path, f"bundle {name!r}: {key!r} must be a file path, got {value!r}")
        files = {k: str(root / entry[k]) for k in entry}
        head, grid = _mask(Path(files["head"]), path, grid)
        tail, grid = _mask(Path(files["tail"]), path, grid)
        gt = None
        if "gt_mask" in entry:
            gt, grid = _mask(Path(files["gt_mask"]), path, grid)
            if not gt.any():
                raise InputError(Path(files["gt_mask"]), f"ground-truth mask of bundle {name!r} is empty")
        bundles.append(BundleRegions(name, head, tail, gt, files["head"], files["tail"]))
    return ScoringConfig(bundles, grid[0], grid[1], path, Path(bundles[0].head_file))


@dataclass
class Segmentation:
    """Which streamlines are VS of which bundle, IC of which ROI pair, or NC (indices).

    ``ic`` is a list of (name, indices) in pair order: two pairs may share a name (ROI
    files with the same name in different folders), as in scilpy.
    """

    vs: dict[str, np.ndarray]
    ic: list[tuple[str, np.ndarray]]
    nc: np.ndarray
    total: int
    first: np.ndarray = field(repr=False)   # (S, 3) voxel of every streamline's first point
    last: np.ndarray = field(repr=False)


def _ends(streamlines, shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxels of first and last points, and which streamlines have points at all."""
    points, lengths = to_corner(streamlines)
    has = lengths > 0
    ends = np.cumsum(lengths)[has]
    first = np.zeros((len(lengths), 3), dtype=np.int64)
    last = np.zeros((len(lengths), 3), dtype=np.int64)
    first[has] = endpoint_voxels(points[ends - lengths[has]], shape, corner=True)
    last[has] = endpoint_voxels(points[ends - 1], shape, corner=True)
    return first, last, has


def segment(streamlines, config: ScoringConfig) -> Segmentation:
    """Assign every streamline (voxel space, centres at integers) to one VS bundle, one IC pair or NC."""
    first, last, has = _ends(streamlines, config.shape)
    rois: dict[str, np.ndarray] = {}
    for b in config.bundles:
        rois.setdefault(b.tail_file, b.tail)
        rois.setdefault(b.head_file, b.head)
    # which ROIs hold each streamline's first and last point, looked up once
    in_first = {f: roi[tuple(first.T)] for f, roi in rois.items()}
    in_last = {f: roi[tuple(last.T)] for f, roi in rois.items()}

    def joins(file_a: str, file_b: str, ids: np.ndarray) -> np.ndarray:
        return (in_first[file_a][ids] & in_last[file_b][ids]) | (in_last[file_a][ids] & in_first[file_b][ids])

    remaining = np.flatnonzero(has)
    vs = {}
    for b in config.bundles:
        hit = joins(b.head_file, b.tail_file, remaining)
        vs[b.name], remaining = remaining[hit], remaining[~hit]
    own = {tuple(sorted((b.tail_file, b.head_file))) for b in config.bundles}
    ic = []
    for file_a, file_b in itertools.combinations(sorted(rois), 2):
        if (file_a, file_b) in own or remaining.size == 0:
            continue
        hit = joins(file_a, file_b, remaining)
        if hit.any():
            ic.append((f"{data_stem(file_a)}_{data_stem(file_b)}", remaining[hit]))
            remaining = remaining[~hit]
    nc = np.sort(np.concatenate([remaining, np.flatnonzero(~has)]))
    return Segmentation(vs, ic, nc, len(streamlines), first, last)


def _f1(overlap: float, overreach: float) -> float:
    if overlap == 0 and overreach == 1:
        return 0.0
    precision, recall = 1.0 - overreach, overlap
    return 2.0 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _voxel_map(streamlines, shape) -> np.ndarray:
    return traversed_voxels(streamlines, shape)


def bundle_scores(streamlines, gt_mask: np.ndarray | None, shape,
                  endpoints: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """scilpy's per-bundle entry: VS, TP, FP, FN, OL, OR_pct_vs, OR_pct_gt, f1, endpoint counts.

    ``endpoints`` (voxels of first and last points) saves looking them up again.
    """
    result: dict = {"VS": len(streamlines)}
    if gt_mask is None:
        result["Scoring skipped"] = "No gt_mask provided"
        return result
    if len(streamlines) == 0:
        result.update(TP=0, FP=0, FN=0, OL=0, OR_pct_gt=0, OR_pct_vs=0, f1=0, endpoints_OL=0, endpoints_OR=0)
        return result
    voxels = _voxel_map(streamlines, shape)
    tp = int(np.count_nonzero(gt_mask & voxels))
    fp = int(np.count_nonzero(~gt_mask & voxels))
    fn = int(np.count_nonzero(gt_mask & ~voxels))
    overlap, or_vs, or_gt = tp / (tp + fn), (fp / (tp + fp) if tp + fp else 0), fp / (tp + fn)
    ends = np.zeros(shape, dtype=bool)
    if endpoints is None:
        first, last, has = _ends(streamlines, shape)
        endpoints = (first[has], last[has])
    ends[tuple(endpoints[0].T)] = ends[tuple(endpoints[1].T)] = True
    result.update(TP=tp, FP=fp, FN=fn, OL=overlap, OR_pct_vs=or_vs, OR_pct_gt=or_gt, f1=_f1(overlap, or_vs),
                  endpoints_OL=int(np.count_nonzero(ends & gt_mask)),
                  endpoints_OR=int(np.count_nonzero(ends & ~gt_mask)))
    return result


@dataclass
class TractometerResult:
    """scilpy's ``results.json`` as a dict (``scores``), with the segmentation behind it."""

    scores: dict
    segmentation: Segmentation = field(repr=False)

    def __getitem__(self, key: str):
        return self.scores[key]

    def to_json(self) -> str:
        return json.dumps(self.scores, indent=2)


def score(streamlines, config: ScoringConfig) -> TractometerResult:
    """Score ``streamlines`` (voxel space, centres at integers, on the config's grid)."""
    seg = segment(streamlines, config)
    total = seg.total
    vs_count = sum(len(v) for v in seg.vs.values())
    ic_count = sum(len(ids) for _, ids in seg.ic)
    nc_count = len(seg.nc)

    def ratio(n: int) -> float:
        return n / total if total else 0.0

    scores: dict = {
        "total_streamlines": total, "VB": sum(1 for v in seg.vs.values() if len(v)), "VS": vs_count,
        "VS_ratio": ratio(vs_count), "IS": ic_count + nc_count, "IS_ratio": ratio(ic_count + nc_count),
        "IB": sum(1 for _, ids in seg.ic if len(ids)), "IC": ic_count, "IC_ratio": ratio(ic_count),
        "NC": nc_count, "NC_ratio": ratio(nc_count),
    }
    bundle_wise: dict = {}
    sums, scored = {"OL": 0.0, "OR_pct_gt": 0.0, "OR_pct_vs": 0.0, "f1": 0.0}, 0
    for b in config.bundles:
        ids = seg.vs[b.name]
        entry = bundle_scores([streamlines[i] for i in ids], b.gt_mask, config.shape, (seg.first[ids], seg.last[ids]))
        bundle_wise[b.name] = entry
        if b.gt_mask is not None:
            scored += 1
            for key in sums:
                sums[key] += entry[key]
    bundle_wise["IB"] = {name: {"IC": len(ids), "nb_voxels": int(_voxel_map([streamlines[i] for i in ids],
                                                                             config.shape).sum())}
                         for name, ids in seg.ic}  # a repeated name keeps its last pair, as in scilpy
    scores["bundle_wise"] = bundle_wise
    if scored:
        scores.update(mean_OL=sums["OL"] / scored, mean_OR_gt=sums["OR_pct_gt"] / scored,
                      mean_OR_vs=sums["OR_pct_vs"] / scored, mean_f1=sums["f1"] / scored)
    return TractometerResult(scores, seg)


def format_table(result: TractometerResult | dict) -> str:
    """A readable summary: global counts, then one row per bundle."""
    s = result.scores if isinstance(result, TractometerResult) else result
    lines = [f"streamlines {s['total_streamlines']}: VS {s['VS']} ({100 * s['VS_ratio']:.1f}%), "
             f"IC {s['IC']} ({100 * s['IC_ratio']:.1f}%), NC {s['NC']} ({100 * s['NC_ratio']:.1f}%); "
             f"VB {s['VB']}/{sum(1 for k in s['bundle_wise'] if k != 'IB')}, IB {s['IB']}"]
    if "mean_OL" in s:
        lines.append(f"mean OL {s['mean_OL']:.3f}, OR {s['mean_OR_vs']:.3f} (of recovered) "
                     f"{s['mean_OR_gt']:.3f} (of GT), F1 {s['mean_f1']:.3f}")
    lines.append(f"{'bundle':<16}{'VS':>8}{'OL':>8}{'OR':>8}{'OR_gt':>8}{'F1':>8}")
    for name, b in s["bundle_wise"].items():
        if name == "IB":
            continue
        if "OL" in b:
            lines.append(f"{name:<16}{b['VS']:>8}{b['OL']:>8.3f}{b['OR_pct_vs']:>8.3f}{b['OR_pct_gt']:>8.3f}"
                         f"{b['f1']:>8.3f}")
        else:
            lines.append(f"{name:<16}{b['VS']:>8}{'(no gt_mask)':>32}")
    for name, b in s["bundle_wise"]["IB"].items():
        lines.append(f"  IC {name}: {b['IC']} streamlines, {b['nb_voxels']} voxels")
    return "\n".join(lines)
