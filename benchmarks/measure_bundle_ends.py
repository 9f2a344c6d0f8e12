"""Where the streamlines seeded in one bundle end: which end regions they join, and where the rest stop.

Run: ``.venv/bin/python benchmarks/measure_bundle_ends.py W/moved_fibercup_9303 --bundle arc``
where ``W`` is ``bench_ddtracking.py --work W`` (its phantoms, written by that benchmark).

Seeds: one at the centre of every white-matter voxel of the bundle's ground-truth mask. Rules:
CSD ``det`` (1 mm) and DDTracking (``--model``, shipped, at its validated guide weight, 1
voxel), with the settings of ``bench_ddtracking.py``. For each rule, the pairs of end regions its
streamlines' two ends fall in (``-``: none), and for the streamlines that join one of the
bundle's regions to none, the distance (voxels) from the free end to the bundle's other region:
a small distance is a streamline that stopped short of the bundle's end or left it through the
side near there. A measurement (README, "The moved FiberCup"), not a target: no ``--check``.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from bench_ddtracking import Subject, run
from difftract.models.ddtracking.defaults import TrackingDefaults
from difftract.models.ddtracking.getter import load_ddtracking


def region_of(s: Subject, point: np.ndarray) -> str:
    """The bundle whose head or tail region holds the point's voxel, or ``-``."""
    i = tuple(np.clip(np.round(point).astype(int), 0, np.array(s.config.shape) - 1))
    return next((b.name for b in s.config.bundles if b.head[i] or b.tail[i]), "-")


def ends(s: Subject, lines: list[np.ndarray], bundle) -> tuple[Counter, np.ndarray]:
    """Counts of end-region pairs, and the free ends' distances to the bundle's region they did not reach."""
    pairs, distances = Counter(), []
    to_head = ndimage.distance_transform_edt(~bundle.head)
    to_tail = ndimage.distance_transform_edt(~bundle.tail)
    for line in lines:
        a, b = region_of(s, line[0]), region_of(s, line[-1])
        pairs[tuple(sorted((a, b)))] += 1
        if sorted((a, b)) == ["-", bundle.name]:
            free, joined = (line[0], line[-1]) if a == "-" else (line[-1], line[0])
            i = tuple(np.clip(np.round(free).astype(int), 0, np.array(s.config.shape) - 1))
            j = tuple(np.clip(np.round(joined).astype(int), 0, np.array(s.config.shape) - 1))
            distances.append(to_tail[i] if bundle.head[j] else to_head[i])
    return pairs, np.array(distances)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("phantom", type=Path)
    ap.add_argument("--bundle", required=True, help="the bundle whose voxels seed")
    ap.add_argument("--model", default="full", help="a shipped model (full, fast)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    s = Subject(args.phantom, 1, None)
    bundle = next((b for b in s.config.bundles if b.name == args.bundle), None)
    if bundle is None:
        ap.error(f"no bundle {args.bundle!r}; the phantom has {', '.join(b.name for b in s.config.bundles)}")
    seeds = torch.from_numpy(np.argwhere(bundle.gt_mask & s.wm).astype(np.float32))
    loaded = load_ddtracking(model=args.model)
    guide = TrackingDefaults.from_meta(loaded[1]).fodf_guide
    print(f"{args.phantom.name}, bundle {bundle.name}: {len(seeds)} seeds (one per voxel of its mask)")
    for name, tracker in (("det", s.classical("det")),
                          (f"ddtracking {args.model} W {guide:g}", s.learned(loaded, 1, False, guide, chunk_size=10_000))):
        lines, _ = run(tracker, seeds)
        pairs, distances = ends(s, lines, bundle)
        print(f"\n{name}: {len(lines)} streamlines; end regions: "
              + ", ".join(f"{a}-{b} {n}" for (a, b), n in pairs.most_common(6)))
        if len(distances):
            q = np.percentile(distances, [25, 50, 75])
            print(f"  {len(distances)} join one of {bundle.name}'s regions and none: their free end lies "
                  f"{q[0]:.1f} / {q[1]:.1f} / {q[2]:.1f} voxels (quartiles) from its other region")


if __name__ == "__main__":
    main()
