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
from difftract.models.ddtracking.getter import load_named


def end_regions(s: Subject) -> tuple[np.ndarray, list[str]]:
    """A label volume of the end regions (0: none; ``k``: bundle ``names[k]``'s head or tail) and the names."""
    labels = np.zeros(s.config.shape, dtype=np.int16)
    for k, b in enumerate(s.config.bundles, start=1):
        labels[(b.head | b.tail) & (labels == 0)] = k
    return labels, ["-", *(b.name for b in s.config.bundles)]


def ends(s: Subject, lines: list[np.ndarray], bundle) -> tuple[Counter, np.ndarray]:
    """Counts of end-region pairs, and the free ends' distances to the bundle's region they did not reach."""
    labels, names = end_regions(s)
    to_head = ndimage.distance_transform_edt(~bundle.head)
    to_tail = ndimage.distance_transform_edt(~bundle.tail)
    first, last = (np.clip(np.rint([line[i] for line in lines]).astype(int), 0, np.array(s.config.shape) - 1)
                   for i in (0, -1))
    a, b = (np.array(names)[labels[tuple(v.T)]] for v in (first, last))
    pairs = Counter(tuple(sorted(p)) for p in zip(a, b))
    one = ((a == bundle.name) & (b == "-")) | ((a == "-") & (b == bundle.name))
    free = np.where((a == "-")[:, None], first, last)[one]          # the end in no region
    joined = np.where((a == "-")[:, None], last, first)[one]        # the end in one of the bundle's
    distances = np.where(bundle.head[tuple(joined.T)], to_tail[tuple(free.T)], to_head[tuple(free.T)])
    return pairs, distances


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("phantom", type=Path)
    ap.add_argument("--bundle", required=True, help="the bundle whose voxels seed")
    ap.add_argument("--model", default="full", help="a shipped model (full, fast) or a weights file")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    s = Subject(args.phantom, 1, None)
    bundle = next((b for b in s.config.bundles if b.name == args.bundle), None)
    if bundle is None:
        ap.error(f"no bundle {args.bundle!r}; the phantom has {', '.join(b.name for b in s.config.bundles)}")
    seeds = torch.from_numpy(np.argwhere(bundle.gt_mask & s.wm).astype(np.float32))
    loaded = load_named(args.model)
    guide = TrackingDefaults.from_meta(loaded[1]).fodf_guide
    print(f"{args.phantom.name}, bundle {bundle.name}: {len(seeds)} seeds (one per voxel of its mask)")
    rules = {"det": s.classical("det"),
             f"ddtracking {args.model} W {guide:g}": s.learned(loaded, 1, False, guide, chunk_size=10_000)}
    for name, tracker in rules.items():
        lines, _ = run(tracker, seeds)
        pairs, distances = ends(s, lines, bundle)
        print(f"\n{name}: {len(lines)} streamlines; end regions: "
              + ", ".join(f"{a} + {b} {n}" for (a, b), n in pairs.most_common(6)))
        if len(distances):
            q = np.percentile(distances, [25, 50, 75])
            print(f"  {len(distances)} join one of {bundle.name}'s regions and none: their free end lies "
                  f"{q[0]:.1f} / {q[1]:.1f} / {q[2]:.1f} voxels (quartiles) from its other region")


if __name__ == "__main__":
    main()
