"""Choosing six DWIs for QCG-DTI, and checking a six-DWI q-space input.

A "flexible" set is the six scheme directions nearest to a randomly rotated copy of Skare's
optimised six-direction set DSM6 (Skare et al., JMR 2000), all from one shell. It is kept
when the mean angle between the chosen and the rotated directions is under 5 degrees and
the condition number of the tensor design matrix is under 2 (DSM6 itself has 1.32). A
"fixed" set is the one nearest to the unrotated DSM6.

The design matrix rows are ``(gx^2, 2 gx gy, gy^2, 2 gx gz, 2 gy gz, gz^2)``; its
condition number uses the directions only, so it measures the geometry of the set
whatever the b-values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from ...errors import ConfigError
from ...io.gradients import B0_THRESHOLD
from ...reconst.sh import SHELL_TOLERANCE, shells

DSM6 = np.array([[0.910, 0.416, 0.0], [0.910, -0.416, 0.0], [0.416, 0.0, 0.910],
                 [-0.416, 0.0, 0.910], [0.0, 0.910, 0.416], [0.0, 0.910, -0.416]])
DSM6 /= np.linalg.norm(DSM6, axis=1, keepdims=True)
MAX_MEAN_ANGLE = 5.0
MAX_CONDITION = 2.0
_BATCH = 256              # rotations tried at once by flexible_six


@dataclass(frozen=True)
class SixSet:
    """Six DWI volume indices and how well they match their target set."""

    indices: tuple[int, ...]
    shell: float
    mean_angle: float      # degrees, to the (rotated) DSM6 directions
    condition: float       # of the direction design matrix


def design_condition(directions: np.ndarray) -> float:
    """Condition number of the six-direction tensor design matrix (directions only)."""
    x, y, z = np.asarray(directions, dtype=np.float64).T
    B = np.stack([x * x, 2 * x * y, y * y, 2 * x * z, 2 * y * z, z * z], axis=1)
    return float(np.linalg.cond(B))


def _has_shell(bvals: np.ndarray, shell: float) -> bool:
    return bool(np.any(np.abs(shells(bvals) - shell) <= SHELL_TOLERANCE))


def _nearest(targets: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray,
             shell: float) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The volumes of ``shell`` nearest (sign-invariant) to each of ``targets`` (K, 6, 3): their indices
    ``(K, 6)``, whether the six are distinct ``(K,)`` and their mean angle to the targets in degrees
    ``(K,)``; None when the shell has fewer than six volumes."""
    candidates = np.flatnonzero(np.abs(bvals - shell) <= SHELL_TOLERANCE)
    if len(candidates) < targets.shape[1]:
        return None
    cos = np.abs(targets @ bvecs[candidates].T)                       # (K, 6, M)
    pick = cos.argmax(axis=2)
    ordered = np.sort(pick, axis=1)
    distinct = np.all(ordered[:, 1:] != ordered[:, :-1], axis=1)
    best = np.take_along_axis(cos, pick[..., None], axis=2)[..., 0]
    return candidates[pick], distinct, np.degrees(np.arccos(np.clip(best, 0.0, 1.0))).mean(axis=1)


def _six_set(volumes: np.ndarray, shell: float, mean_angle: float, bvecs: np.ndarray) -> SixSet:
    return SixSet(tuple(int(i) for i in volumes), float(shell), float(mean_angle), design_condition(bvecs[volumes]))


def _first_passing(targets: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray,
                   shell: float) -> tuple[int, SixSet] | None:
    """The first of ``targets`` (K, 6, 3) whose nearest volumes pass both criteria, with its set.

    Many rotations at once: a 60-direction shell accepts about one rotation in a hundred, and
    trying them one at a time cost seconds per subject (a QCG-DTI training pool draws hundreds
    of sets).
    """
    found = _nearest(targets, bvals, bvecs, shell)
    if found is None:
        return None
    volumes, distinct, mean_angle = found
    for k in np.flatnonzero(distinct & (mean_angle < MAX_MEAN_ANGLE)):   # few; the condition decides
        six = _six_set(volumes[k], shell, mean_angle[k], bvecs)
        if six.condition < MAX_CONDITION:
            return int(k), six
    return None


def fixed_six(bvals: np.ndarray, bvecs: np.ndarray, shell: float | None = None) -> SixSet:
    """The volumes nearest to the unrotated DSM6 on ``shell`` (default: the lowest shell)."""
    available = shells(bvals)
    shell = float(available[0] if shell is None else shell)
    found = _nearest(DSM6[None], bvals, bvecs, shell) if _has_shell(bvals, shell) else None
    if found is None or not found[1][0]:
        raise ConfigError(f"the scheme has no six distinct directions near DSM6 on shell b={shell:g}")
    return _six_set(found[0][0], shell, found[2][0], bvecs)


def flexible_six(bvals: np.ndarray, bvecs: np.ndarray, rng: np.random.Generator,
                 shell: float | None = None, max_tries: int = 20000) -> SixSet:
    """Six volumes nearest to a randomly rotated DSM6, on ``shell`` (None: a random shell per try).

    Rotations are drawn until the set passes both criteria (mean angle < 5 degrees,
    condition number < 2); a scheme too sparse for that is an error. They are tried
    :data:`_BATCH` at a time; with a ``shell``, the set and the state ``rng`` is left in are
    those of drawing one rotation (four normals) per try.
    """
    available = shells(bvals)
    if len(available) == 0:
        raise ConfigError("the scheme has no diffusion-weighted volumes")
    if shell is not None and not _has_shell(bvals, shell):
        raise ConfigError(f"the scheme has no shell b={shell:g}; its shells are "
                          f"{', '.join(f'{b:g}' for b in available)}")
    tried = 0
    while tried < max_tries:
        batch = min(_BATCH, max_tries - tried)
        state = rng.bit_generator.state
        per_try = (available[rng.integers(len(available), size=batch)] if shell is None
                   else np.full(batch, float(shell)))
        targets = DSM6 @ np.swapaxes(Rotation.from_quat(rng.standard_normal((batch, 4))).as_matrix(), 1, 2)
        first: tuple[int, SixSet] | None = None
        for b in np.unique(per_try):
            tries = np.flatnonzero(per_try == b)
            found = _first_passing(targets[tries], bvals, bvecs, float(b))
            if found is not None and (first is None or tries[found[0]] < first[0]):
                first = (int(tries[found[0]]), found[1])
        if first is not None:
            if shell is not None:
                # leave ``rng`` where drawing one rotation (four normals) per try would have
                rng.bit_generator.state = state
                rng.standard_normal((first[0] + 1, 4))
            return first[1]
        tried += batch
    raise ConfigError(f"no rotation of DSM6 in {max_tries} tries matched six directions within "
                      f"{MAX_MEAN_ANGLE:g} degrees (condition < {MAX_CONDITION:g}); the shell is too sparse "
                      "(about 60 or more directions per shell are needed)")


def flexible_pool(bvals: np.ndarray, bvecs: np.ndarray, n: int, seed: int) -> list[SixSet]:
    """``n`` flexible sets drawn once per subject, spread over its shells in turn."""
    rng = np.random.default_rng(seed)
    available = shells(bvals)
    return [flexible_six(bvals, bvecs, rng, shell=available[k % len(available)]) for k in range(n)]


def check_six(bvals: np.ndarray, bvecs: np.ndarray, where: str = "input") -> None:
    """Refuse a q-space input QCG-DTI cannot use: it needs 1+ b0 and exactly six independent DWIs.

    Raises
    ------
    ConfigError
        Naming ``where`` and the problem: no b0, not six DWIs, or directions that cannot
        determine a tensor (collinear, coplanar or otherwise degenerate).
    """
    bvals, bvecs = np.asarray(bvals, dtype=np.float64), np.asarray(bvecs, dtype=np.float64)
    b0 = bvals <= B0_THRESHOLD
    if not b0.any():
        raise ConfigError(f"{where}: QCG-DTI needs a b0 volume (b <= {B0_THRESHOLD:g}); none found")
    n_dw = int((~b0).sum())
    if n_dw != 6:
        raise ConfigError(f"{where}: QCG-DTI takes exactly six diffusion-weighted volumes, got {n_dw} "
                          "(with more, use --select-six to pick six)")
    condition = design_condition(bvecs[~b0])
    if not np.isfinite(condition) or condition > 1e3:
        raise ConfigError(f"{where}: the six gradient directions cannot determine a tensor (design condition "
                          f"number {condition:.3g}); they are collinear, coplanar or repeated")
