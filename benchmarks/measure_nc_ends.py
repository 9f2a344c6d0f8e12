"""Where no-connection (NC) streamlines end, and what integration does to the true directions' NC.

Run: ``.venv/bin/python benchmarks/measure_nc_ends.py W/brain_9004 W/unseen_random_9002 ...``
where ``W`` is ``bench_ddtracking.py --work W`` (its phantoms, written by that benchmark).

For each phantom, the same 3,000 seeds and settings as ``bench_ddtracking.py --max-seeds 3000``:

- for CSD ``det`` and DDTracking ``full`` (shipped), the NC streamlines by how many of their two
  end voxels lie in an endpoint region (0, 1, 2) and on the white-matter mask's edge (a voxel
  with a neighbour outside it): one end in a region and the other on the edge is a streamline
  that left a bundle's side or ran into another bundle;
- the ``true peaks`` row (the phantom's noise-free fibre directions at 1 mm) with Euler, RK2
  and RK4: how much of the perfect local rule's NC is the integrator's.

A measurement, not a target: it has no ``--check``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from bench_ddtracking import Subject, run
from difftract.eval.tractometer import score, segment
from difftract.models.ddtracking.getter import load_ddtracking


def end_maps(s: Subject) -> tuple[np.ndarray, np.ndarray]:
    """Every endpoint region together, and the white-matter mask's edge (a voxel with a neighbour outside)."""
    regions = np.zeros(s.config.shape, dtype=bool)
    for b in s.config.bundles:
        regions |= b.head | b.tail
    wm = np.asarray(s.wm) > 0
    return regions, wm & ~ndimage.binary_erosion(wm)


def end_counts(lines, s: Subject, regions: np.ndarray, edge: np.ndarray) -> str:
    """NC streamlines of ``lines`` by ends in an endpoint region and ends on the mask's edge (:func:`end_maps`)."""
    seg = segment(lines, s.config)
    first, last = seg.first[seg.nc], seg.last[seg.nc]
    in_region = regions[tuple(first.T)].astype(int) + regions[tuple(last.T)]
    on_edge = edge[tuple(first.T)].astype(int) + edge[tuple(last.T)]
    return (f"NC {len(seg.nc)} of {len(lines)}; ends in a region 0/1/2: {np.bincount(in_region, minlength=3)}; "
            f"ends on the mask's edge 0/1/2: {np.bincount(on_edge, minlength=3)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("phantoms", type=Path, nargs="+", help="phantom folders of bench_ddtracking.py --work")
    ap.add_argument("--max-seeds", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    full = load_ddtracking(model="full")
    for directory in args.phantoms:
        s = Subject(directory, 1, args.max_seeds)
        maps = end_maps(s)
        det = run(s.classical("det"), s.seeds)[0]
        learned = run(s.learned(full, 1, False, chunk_size=10_000), s.seeds)[0]
        print(f"\n{directory.name}")
        print(f"  det:             {end_counts(det, s, *maps)}")
        print(f"  ddtracking full: {end_counts(learned, s, *maps)}")
        for integrator in ("euler", "rk2", "rk4"):
            r = score(run(s.true_peaks(1.0, integrator), s.seeds)[0], s.config).scores
            print(f"  true peaks, 1 mm, {integrator:5}: VC {r['VS_ratio']:.3f} NC {r['NC_ratio']:.3f} "
                  f"F1 {r['mean_f1']:.3f}")


if __name__ == "__main__":
    main()
