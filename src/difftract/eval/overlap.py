"""Voxel overlap between a recovered bundle and a reference bundle.

A bundle becomes a streamline-density map (how many streamlines traverse each voxel,
each streamline counted once per voxel, with the Tractometer's voxel rule from
:func:`difftract.eval.traversal.streamline_voxels`), then a binary map (voxels with at
least ``threshold`` streamlines). On those maps, with A the recovered and B the
reference voxels:

- Dice = 2|A∩B| / (|A| + |B|); NaN when both maps are empty, as scilpy's
  ``compute_dice_voxel`` (the score is undefined, and a NaN cannot pass for agreement);
- weighted Dice (Cousineau et al. 2017, NeuroImage: Clinical 16:222-233):
  sum over A∩B of (w_A + w_B) over the sum of all w_A + w_B, with the raw streamline
  counts as weights, as scilpy's ``compute_dice_voxel``; ``normalize=True`` first scales
  each map to sum 1 (so a bundle with more streamlines does not dominate);
- overlap = |A∩B| / |B| (the Tractometer's OL) and overreach = |A\\B| / |A| (the share of
  the recovered volume outside the reference, scilpy's OR_pct_vs); |A\\B| / |B| (scilpy's
  OR_pct_gt) is reported too, as ``overreach_reference``;
- tract detection rate: the share of reference bundles whose recovered map covers at
  least ``min_overlap`` of their voxels (no canonical definition was found; see there).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..io.tractogram import Tractogram
from . import traversal


def _checked_shape(shape: Any) -> tuple[int, int, int]:
    """``shape`` as three positive ints; ConfigError otherwise."""
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise ConfigError(f"the grid shape must be 3 positive integers, got {shape!r}") from None
    if len(dims) != 3 or min(dims) < 1:
        raise ConfigError(f"the grid shape must be 3 positive integers, got {shape!r}")
    return dims


def density_map(streamlines: Sequence[np.ndarray] | Tractogram,
                shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """Number of streamlines traversing each voxel, ``(X, Y, Z)`` int32.

    Parameters
    ----------
    streamlines : sequence of (n_i, 3) arrays or Tractogram
        Voxel coordinates, integers at voxel centres. A Tractogram brings its grid.
    shape : 3 ints, optional
        The grid; required for plain streamlines, checked against a Tractogram's.

    Notes
    -----
    Each streamline counts once per voxel however many of its points fall there; parts
    off the grid are dropped.
    """
    if isinstance(streamlines, Tractogram):
        if shape is not None and _checked_shape(shape) != tuple(streamlines.dimensions):
            raise ConfigError(f"shape {tuple(shape)} differs from the tractogram's grid "
                              f"{tuple(streamlines.dimensions)}")
        shape, streamlines = streamlines.dimensions, streamlines.streamlines
    elif shape is None:
        raise ConfigError("density_map needs the grid shape for plain streamlines")
    dims = _checked_shape(shape)
    if len(streamlines) == 0:
        return np.zeros(dims, dtype=np.int32)
    _, flat = traversal.streamline_voxels(streamlines, dims)
    counts = np.bincount(np.asarray(flat, dtype=np.int64), minlength=int(np.prod(dims)))
    return counts.astype(np.int32).reshape(dims)


def _checked_threshold(threshold: float) -> float:
    if not np.isfinite(threshold) or threshold <= 0:
        raise ConfigError(f"the streamline-count threshold must be positive, got {threshold}")
    return threshold


def binary_map(density: np.ndarray, threshold: float = 1) -> np.ndarray:
    """Voxels traversed by at least ``threshold`` streamlines (bool, same shape).

    A minimum streamline count above 1 drops voxels reached by a few stray streamlines.
    """
    return np.asarray(density) >= _checked_threshold(threshold)


def _pair(a: Any, b: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ConfigError(f"{what}: the maps have different shapes, {a.shape} and {b.shape}")
    return a, b


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient 2|A∩B| / (|A| + |B|) of two binary maps (nonzero = inside).

    NaN when both maps are empty (undefined, as in scilpy); 0 when only one is.
    """
    a, b = _pair(a, b, "dice")
    a, b = a != 0, b != 0
    total = int(a.sum()) + int(b.sum())
    return float("nan") if total == 0 else 2.0 * int((a & b).sum()) / total


def _weights(density: np.ndarray, name: str) -> np.ndarray:
    density = np.asarray(density, dtype=np.float64)
    if not np.all(np.isfinite(density)):
        raise ConfigError(f"weighted_dice: {name} has non-finite values")
    if np.any(density < 0):
        raise ConfigError(f"weighted_dice: {name} has negative values ({int((density < 0).sum())} voxels)")
    return density


def weighted_dice(density_a: np.ndarray, density_b: np.ndarray, normalize: bool = False) -> float:
    """Weighted Dice (wDice) of two streamline-density maps (Cousineau et al. 2017).

    ``sum over voxels in both of (w_A + w_B) / sum over all voxels of (w_A + w_B)``, with
    the raw streamline counts as weights by default, as scilpy's ``compute_dice_voxel``
    (the field's reference). With ``normalize`` each map is divided by its sum first, so
    the score does not depend on how many streamlines each bundle has. The two agree when
    both maps have the same sum.
    NaN when both maps are empty; 0 when only one is.
    """
    wa, wb = _pair(density_a, density_b, "weighted_dice")
    wa, wb = _weights(wa, "density_a"), _weights(wb, "density_b")
    sum_a, sum_b = wa.sum(), wb.sum()
    if sum_a == 0 and sum_b == 0:
        return float("nan")
    if sum_a == 0 or sum_b == 0:
        return 0.0
    if normalize:
        wa, wb = wa / sum_a, wb / sum_b
    both = (wa > 0) & (wb > 0)
    return float((wa[both].sum() + wb[both].sum()) / (wa.sum() + wb.sum()))


@dataclass
class OverlapScores:
    """Overlap of one recovered bundle (A) with its reference (B).

    Attributes
    ----------
    dice : float
        2|A∩B| / (|A| + |B|).
    wdice : float
        Weighted Dice of the (thresholded) density maps, raw streamline counts as weights.
    overlap : float
        |A∩B| / |B|, the share of the reference recovered (Tractometer OL).
    overreach : float
        |A\\B| / |A|, the share of the recovered volume outside the reference; NaN when A
        is empty.
    overreach_reference : float
        |A\\B| / |B| (the Tractometer's OR_pct_gt; may exceed 1).
    voxels : int
        |A|, voxels of the recovered bundle.
    reference_voxels : int
        |B|, voxels of the reference bundle.
    """

    dice: float
    wdice: float
    overlap: float
    overreach: float
    overreach_reference: float
    voxels: int
    reference_voxels: int

    def as_dict(self) -> dict[str, float | int]:
        """The scores as a plain dict (JSON-ready)."""
        return asdict(self)


def _scores(density_a: np.ndarray, density_b: np.ndarray) -> OverlapScores:
    """Scores of a recovered density (already thresholded) against a reference density."""
    a, b = density_a > 0, density_b > 0
    n_a, n_b, n_ab = int(a.sum()), int(b.sum()), int((a & b).sum())
    return OverlapScores(dice=dice(a, b), wdice=weighted_dice(density_a, density_b),
                         overlap=n_ab / n_b,
                         overreach=(n_a - n_ab) / n_a if n_a else float("nan"),
                         overreach_reference=(n_a - n_ab) / n_b,
                         voxels=n_a, reference_voxels=n_b)


def _reference_density(name: str, bundle: Any, dims: tuple[int, int, int], threshold: float) -> np.ndarray:
    """A reference bundle (streamlines or a mask on the grid) as a thresholded density."""
    if isinstance(bundle, np.ndarray) and bundle.dtype == bool:
        if bundle.shape != dims:
            raise ConfigError(f"reference bundle {name!r}: mask shape {bundle.shape} differs from the grid {dims}")
        density = bundle.astype(np.int32)
    else:
        density = density_map(bundle, dims)
        density = np.where(binary_map(density, threshold), density, 0)
    if not density.any():
        raise ConfigError(f"reference bundle {name!r} covers no voxel of the grid")
    return density


def compare_bundles(recovered: Mapping[str, Any], reference: Mapping[str, Any], shape: tuple[int, int, int],
                    threshold: float = 1, reference_threshold: float = 1) -> dict[str, OverlapScores]:
    """Overlap scores of each recovered bundle against the reference bundle of the same name.

    Parameters
    ----------
    recovered : dict of str to streamlines
        Recovered bundles; a reference name missing here counts as an empty bundle.
    reference : dict of str to streamlines or bool (X, Y, Z) mask
        Reference bundles; a bool array is a mask, used as it is (wDice then weighs its
        voxels equally); anything else is streamlines.
    shape : 3 ints
        The common grid (streamlines in its voxel coordinates).
    threshold : float
        Minimum streamline count for a voxel to belong to a recovered bundle; voxels
        below it are dropped from the density used by wDice as well.
    reference_threshold : float
        The same for reference bundles given as streamlines.

    Returns
    -------
    dict of str to OverlapScores
        One entry per reference bundle, in the reference's order.
    """
    dims = _checked_shape(shape)
    if not reference:
        raise ConfigError("compare_bundles needs at least one reference bundle")
    unknown = sorted(set(recovered) - set(reference))
    if unknown:
        raise ConfigError(f"recovered bundles without a reference: {', '.join(map(str, unknown))}")
    _checked_threshold(threshold)
    out = {}
    for name, bundle in reference.items():
        ref = _reference_density(name, bundle, dims, reference_threshold)
        rec = density_map(recovered[name], dims) if name in recovered else np.zeros(dims, np.int32)
        out[name] = _scores(np.where(binary_map(rec, threshold), rec, 0), ref)
    return out


def tract_detection_rate(recovered: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
                         min_overlap: float = 0.5) -> float:
    """Share of reference bundles detected: recovered map covers >= ``min_overlap`` of them.

    A reference bundle B counts as detected when its recovered map A (same name; missing
    means empty) has |A∩B| / |B| >= ``min_overlap``. Learning-based tractography papers
    use "detected" loosely (Tractometer's valid bundles need one valid streamline; atlas
    segmentation papers count a tract with a minimum number of streamlines); this is the
    voxel-coverage form. Coverage alone does not penalise overreach: read it with Dice.
    """
    if not 0 < min_overlap <= 1:
        raise ConfigError(f"min_overlap must be in (0, 1], got {min_overlap}")
    if not reference:
        raise ConfigError("tract_detection_rate needs at least one reference bundle")
    unknown = sorted(set(recovered) - set(reference))
    if unknown:
        raise ConfigError(f"recovered bundles without a reference: {', '.join(map(str, unknown))}")
    detected = 0
    for name, ref in reference.items():
        ref = np.asarray(ref) != 0
        if not ref.any():
            raise ConfigError(f"reference bundle {name!r} is an empty map")
        rec = recovered.get(name)
        rec = np.zeros_like(ref) if rec is None else _pair(rec, ref, f"bundle {name!r}")[0] != 0
        detected += int((rec & ref).sum()) / int(ref.sum()) >= min_overlap
    return detected / len(reference)
