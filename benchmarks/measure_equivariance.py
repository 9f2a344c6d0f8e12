"""How far DDTracking is from equivariant to the voxel grid's symmetries, and what averaging over them does.

Run: ``.venv/bin/python benchmarks/measure_equivariance.py PHANTOM_DIR... [--model full] [--mirror BUNDLES]``

1. **One step along the truth.** Along 200 true streamlines of each phantom (resampled at
   1 voxel; the network fed the true past, its GRU from zero at the first point), the median
   angle between the network's one-step direction (S = 1) and the true next step, for the
   network alone and averaged over each group of :data:`SUBGROUPS`
   (:mod:`difftract.models.ddtracking.symmetrise`); and the equivariance gap, the median angle
   between ``R^T f(R x)`` and ``f(x)``, averaged over the 47 other symmetries.
2. **The mirror test** (``--mirror cross_a,cross_b``, first phantom only). The phantom is
   mirrored across the x = y plane (arrays, ground truth and gradient directions; voxel sizes
   must be equal in x and y), and seeds in each named bundle (2 per voxel) are tracked in both
   with ``det``, ``prob`` and the network (guided by its validated weight) alone and with
   ``--mirror-symmetries``. An equivariant rule finds the same bundles in both; one with a
   bias to the grid's axes swaps them.

Not a target check: it measures why (README, "Learned tracking"). Test phantoms may be
given, since nothing here is chosen.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch.nn import functional as F

from bench_ddtracking import Subject, run
from difftract.eval.tractometer import segment
from difftract.io.dwi import load_subject
from difftract.io.tractogram import load_tractogram
from difftract.models.ddtracking.augment import grid_symmetries_for
from difftract.models.ddtracking.data import input_sh, resample
from difftract.models.ddtracking.defaults import TrackingDefaults
from difftract.models.ddtracking.features import neighbourhood
from difftract.models.ddtracking.getter import load_named
from difftract.models.ddtracking.symmetrise import SUBGROUPS
from difftract.tracking.seeding import random_seeds


def _angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Degrees between directions with a sign (the network's are: a turn of over 90 degrees ends a streamline)."""
    return torch.rad2deg(torch.acos((F.normalize(a, dim=-1) * b).sum(-1).clamp(-1.0, 1.0)))


@torch.inference_mode()
def one_step(directory: Path, loaded, n_streamlines: int = 200) -> dict[str, float]:
    """Part 1 on one phantom: median error per group, and the mean equivariance gap."""
    model, _ = loaded
    sh = torch.from_numpy(input_sh(load_subject(directory), model.config.input))
    lines = [np.asarray(s, dtype=np.float64) for s in load_tractogram(directory / "tractogram.trk").streamlines]
    pick = np.random.default_rng(0).choice(len(lines), min(n_streamlines, len(lines)), replace=False)
    lines = [r for r in (resample(lines[i], 1.0) for i in pick) if len(r) > 3]
    steps = [F.normalize(torch.from_numpy(r[1:] - r[:-1]), dim=-1) for r in lines]
    prev = torch.cat([torch.cat([t[:1], t[:-1]]) for t in steps])
    target = torch.cat(steps)
    patches = torch.cat([neighbourhood(sh, torch.from_numpy(r[:-1])) for r in lines])
    lengths = torch.tensor([len(r) - 1 for r in lines])
    table = grid_symmetries_for(sh.shape[-1])
    back = []
    for g in range(len(table)):
        p, d, _ = table.apply(g, patches, prev, target)
        c, v = model.contexts(p, d, lengths)
        back.append(model.direction(c, v, steps=1) @ torch.from_numpy(table.R[g]).float())   # R^T f(R x)
    back = torch.stack(back)
    out = {name: float(_angle(back[list(index)].sum(0), target).median()) for name, index in SUBGROUPS.items()}
    out["gap"] = float(np.mean([_angle(back[g], back[0]).median() for g in range(1, len(table))]))
    return out


def mirrored(src: Path, dst: Path) -> Path:
    """``src`` mirrored across x = y: arrays with x and y swapped, peaks' and gradients' components too.

    The ground truth's streamlines are swapped in mm, which is the mirror for a diagonal affine
    whose x and y agree (a square grid centred alike on both axes), checked here; the scoring
    reads the masks and ROIs only (``gt/bundles`` is left as it is).
    """
    affine = nib.load(src / "dwi.nii.gz").affine
    shape = nib.load(src / "dwi.nii.gz").shape
    if (shape[0] != shape[1] or not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3])))
            or not np.isclose(affine[0, 0], affine[1, 1]) or not np.isclose(affine[0, 3], affine[1, 3])
            or affine[0, 0] <= 0 or affine[2, 2] <= 0):
        raise SystemExit(f"{src}: the mirror test needs a square x-y grid with a diagonal, positive affine "
                         "equal on x and y")
    shutil.copytree(src, dst)
    for path in dst.rglob("*.nii.gz"):
        img = nib.load(path)
        a = np.swapaxes(np.asarray(img.dataobj), 0, 1)
        if path.name == "peaks.nii.gz":
            a = a.reshape(*a.shape[:3], -1, 3)[..., [1, 0, 2]].reshape(a.shape)
        nib.save(nib.Nifti1Image(np.ascontiguousarray(a), img.affine, img.header), path)
    bvecs = np.loadtxt(src / "dwi.bvec")
    swapped = bvecs.copy()      # FSL's x is flipped (positive affine): voxel (-bx, by) -> (by, -bx) -> file (-by, -bx)
    swapped[0], swapped[1] = -bvecs[1], -bvecs[0]
    np.savetxt(dst / "dwi.bvec", swapped, fmt="%.8f")
    truth = nib.streamlines.load(str(src / "tractogram.trk"))
    nib.streamlines.save(nib.streamlines.Tractogram([s[:, [1, 0, 2]] for s in truth.streamlines],
                                                    affine_to_rasmm=np.eye(4)), str(dst / "tractogram.trk"),
                         header=truth.header)
    return dst


def crossing_peaks(s: Subject, bundles: list[str]) -> None:
    """How many CSD fODF peaks (``det``'s field and threshold) the voxels where all ``bundles`` overlap show,
    and how far a single peak lies from the true fibre directions there."""
    masks = [np.asarray(nib.load(s.directory / "gt" / "masks" / f"{b}.nii.gz").dataobj) > 0 for b in bundles]
    voxels = np.argwhere(np.logical_and.reduce(masks))
    if len(voxels) == 0:
        return
    dirs, present = s.field.peaks(torch.as_tensor(voxels, dtype=torch.float32))
    count = present.sum(dim=1).numpy()
    single = dirs[:, 0].numpy()[count == 1]
    truth = s.peaks[tuple(voxels[count == 1].T)][:, : len(bundles)]              # (V, bundles, 3)
    angles = np.degrees(np.arccos(np.clip(np.abs(np.einsum("vi,vki->vk", single, truth)
                                                 / np.maximum(np.linalg.norm(truth, axis=-1), 1e-12)), 0, 1)))
    print(f"  CSD peaks where {', '.join(bundles)} overlap ({len(voxels)} voxels): "
          + ", ".join(f"{k} peak(s) in {int((count == k).sum())}" for k in range(1, int(count.max()) + 1))
          + f"; a single peak lies {angles.mean(axis=0).round(1).tolist()} degrees from the true directions")


def mirror_test(directory: Path, loaded, bundles: list[str], symmetries: list[str]) -> None:
    """Part 2: seeds in each of ``bundles`` tracked in the phantom and its mirror; valid streamlines per bundle."""
    guide = TrackingDefaults.from_meta(loaded[1]).fodf_guide
    with tempfile.TemporaryDirectory() as tmp:
        for label, d in (("as simulated", directory), ("mirrored x = y", mirrored(directory, Path(tmp) / "m"))):
            s = Subject(d, 1, 10)
            rules = {"det": lambda: s.classical("det"), "prob": lambda: s.classical("prob")}
            rules |= {f"network W {guide:g}" + ("" if g == "none" else f", G = {g}"):
                      (lambda g=g: s.learned(loaded, 1, False, guide, symmetries=g, chunk_size=10_000))
                      for g in ["none", *symmetries]}
            print(f"\n{directory.name}, {label}: valid streamlines per bundle (and invalid, no connection)")
            crossing_peaks(s, bundles)
            for bundle in bundles:
                mask = np.asarray(nib.load(d / "gt" / "masks" / f"{bundle}.nii.gz").dataobj) > 0
                seeds = random_seeds(mask & s.wm, 2, torch.Generator().manual_seed(0))
                for name, make in rules.items():
                    seg = segment(run(make(), seeds)[0], s.config)
                    found = ", ".join(f"{k} {len(v)}" for k, v in seg.vs.items() if len(v)) or "none"
                    ic = sum(len(v) for _, v in seg.ic)
                    print(f"  seeds in {bundle:10} {name:28} VS {found}; IC {ic}, NC {len(seg.nc)}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("phantoms", type=Path, nargs="+")
    ap.add_argument("--model", default="full", help="a shipped model (full, fast) or a weights file")
    ap.add_argument("--mirror", help="bundles of the first phantom for the mirror test, comma-separated")
    ap.add_argument("--mirror-symmetries", default="swap", help="groups tracked in the mirror test (default: swap)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_named(args.model)
    print(f"one step along the truth, {args.model}: median error (degrees) per group, and the equivariance gap")
    print(f"{'phantom':26}" + "".join(f"{n:>10}" for n in SUBGROUPS) + f"{'gap':>8}")
    for d in args.phantoms:
        r = one_step(d, loaded)
        print(f"{d.name:26}" + "".join(f"{r[n]:10.2f}" for n in SUBGROUPS) + f"{r['gap']:8.2f}", flush=True)
    if args.mirror:
        mirror_test(args.phantoms[0], loaded, args.mirror.split(","), args.mirror_symmetries.split(","))


if __name__ == "__main__":
    main()
