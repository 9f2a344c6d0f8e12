"""``difftract connectome`` against MRtrix3's ``tck2connectome`` on fibercup (issue 23).

Run: ``.venv/bin/python benchmarks/bench_connectome.py [--check] [--work DIR]`` (about a minute on
2 cores). Needs ``tck2connectome`` on the PATH (Debian/Ubuntu: ``apt install mrtrix3``); without it
the comparison is skipped with a note and every target is unmeasured (``--check`` exits 1).
Prints readable figures, then one JSON object as the last line.

Inputs, all made here from the fibercup phantom (``simulate --preset fibercup --seed 0``):

- the parcellation: one label per ROI of ``gt/rois`` (bundle order of ``scoring.json``, head then
  tail: 14 nodes), with a lookup table naming them;
- three tractograms written as .tck: ``gt`` (the ground-truth streamlines, every end in its ROI),
  ``det`` (``difftract track --method det`` on the phantom's fODF in its white matter) and
  ``boundary``: 3000 synthetic streamlines (seed 0) of 1 to 11 irregularly spaced points whose
  ends are put on voxel faces and corners (ties of the end-voxel rounding), on exact half-voxel
  offsets from labelled voxels (ties between equally near parcels in the radial search), anywhere
  on or up to 3 voxels off the grid.

Each tractogram goes through ``difftract connectome`` and ``tck2connectome -symmetric
-out_assignments`` with the same options: radial search 4 mm (both defaults), radial 2 mm, end
voxels; each with --scale count, length and invlength (radial 2 mm: count only). Compared: every
streamline's node pair, and the matrices (max absolute and relative difference, sums).

Differences found and why (see README, "Connectome"): the assignments and the count matrices are
identical; length-weighted entries differ by up to ~4e-7 relative because tck2connectome 3.0.3
sums each streamline's length in float32 (``Tractography::length`` on float points) where
difftract sums in float64. Redoing MRtrix's float32 lengths here (column "rel f32emu",
``*_f32_emulated`` in the JSON) brings the difference down to ~1e-7 relative (the ground truth's
lengths to 2e-15): what remains is float32 rounding inside MRtrix (order of the norm's terms,
float accumulation), at float32's epsilon (6e-8) times a few.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from _check import Target, parse_args

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

from difftract.eval.connectome import load_parcellation, pair_matrix, read_matrix, read_streamlines_rasmm  # noqa: E402

ISSUE = "issue 23 acceptance: equal matrices, or every difference explained"
TARGETS = [
    Target("mrtrix_found", "==", True, "issue 23: check against MRtrix3's tck2connectome (apt install mrtrix3)"),
    Target("streamlines_compared", ">=", 5000, "gt + det + boundary tractograms, every option"),
    Target("assignment_mismatches", "==", 0, f"{ISSUE} (node pairs of every streamline, every option)"),
    Target("count_max_abs_diff", "==", 0, f"{ISSUE} (count matrices)"),
    Target("length_max_rel_diff", "<=", 1e-6, f"{ISSUE}: explained by MRtrix's float32 lengths"),
    Target("invlength_max_rel_diff", "<=", 1e-6, f"{ISSUE}: explained by MRtrix's float32 lengths"),
]

CASES = [("radial4", [], ["--assignment", "radial"], ("count", "length", "invlength")),
         ("radial2", ["-assignment_radial_search", "2"], ["--assignment", "radial", "--radius", "2"], ("count",)),
         ("end", ["-assignment_end_voxels"], ["--assignment", "end"], ("count", "length", "invlength"))]
MRTRIX_SCALE = {"count": [], "length": ["-scale_length"], "invlength": ["-scale_invlength"]}


def difftract(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "difftract", "-q", *args], check=True, capture_output=True,
                          text=True, env=env)


def make_inputs(work: Path) -> dict:
    """Phantom, ROI parcellation (+ LUT) and the three .tck tractograms."""
    from difftract.io.tractogram import Tractogram, load_tractogram, save_tractogram
    from difftract.phantom import PhantomConfig, save_phantom, simulate

    phantom = work / "phantom"
    if not (phantom / "gt" / "scoring.json").is_file():
        save_phantom(simulate(PhantomConfig(preset="fibercup", seed=0)), phantom, force=True)
    config = json.loads((phantom / "gt" / "scoring.json").read_text())
    reference = nib.load(phantom / "mask.nii.gz")
    labels = np.zeros(reference.shape, np.int16)
    names, overlap = [], 0
    for bundle, entry in config.items():
        for part in ("head", "tail"):
            roi = np.asarray(nib.load(phantom / "gt" / entry[part]).dataobj) > 0
            names.append(f"{bundle}_{part}")
            overlap += int((roi & (labels > 0)).sum())
            labels[roi] = len(names)
    parc, lut = work / "parc.nii.gz", work / "parc_lut.txt"
    nib.save(nib.Nifti1Image(labels, reference.affine), parc)
    lut.write_text("".join(f"{i} {n}\n" for i, n in enumerate(names, 1)))

    tracts = {}
    gt = load_tractogram(phantom / "tractogram.trk")
    tracts["gt"] = save_tractogram(Tractogram(gt.streamlines, gt.affine, gt.dimensions), work / "gt.tck", force=True)
    det = work / "det.tck"
    if not det.is_file():
        difftract("track", str(phantom / "dwi.nii.gz"), str(phantom / "dwi.bval"), str(phantom / "dwi.bvec"),
                  "--mask", str(phantom / "wm.nii.gz"), "--method", "det", "--seed", "0", "--out", str(det),
                  "--force")
    tracts["det"] = det
    tracts["boundary"] = boundary_tractogram(labels, reference.affine, work / "boundary.tck")
    return {"parc": parc, "lut": lut, "tracts": tracts, "nodes": len(names), "roi_overlap_voxels": overlap,
            "labelled_voxels": int((labels > 0).sum()), "grid": list(reference.shape),
            "voxel_mm": [float(v) for v in reference.header.get_zooms()[:3]]}


def boundary_tractogram(labels: np.ndarray, affine: np.ndarray, path: Path, n: int = 3000, seed: int = 0) -> Path:
    """Streamlines whose ends sit where assignment is delicate (ties, edges, off the grid)."""
    rng = np.random.default_rng(seed)
    shape = np.array(labels.shape)
    labelled = np.argwhere(labels > 0)

    def end() -> np.ndarray:
        kind = rng.integers(7)
        if kind == 0:                                    # anywhere on the grid
            return rng.uniform(-0.5, shape - 0.5)
        if kind == 1:                                    # on a voxel face
            v = rng.integers(0, shape).astype(float)
            v[rng.integers(3)] += rng.choice([-0.5, 0.5])
            return v
        if kind == 2:                                    # on a voxel corner
            return rng.integers(0, shape) + rng.choice([-0.5, 0.5], 3)
        if kind == 3:                                    # up to 3 voxels off the grid
            return rng.uniform(-3, shape + 2)
        if kind == 4:                                    # grid-aligned offsets: equal distances
            return rng.integers(0, shape) + rng.choice([-1, 0, 1], 3) * rng.choice([0.5, 1.0, 1.5, 2.0])
        if kind == 5:                                    # half-voxel steps from a labelled voxel
            return labelled[rng.integers(len(labelled))] + rng.integers(-3, 4, 3) * 0.5
        return labelled[rng.integers(len(labelled))] + rng.uniform(-2.5, 2.5, 3)

    streamlines = []
    for _ in range(n):
        a, b = end(), end()
        k = int(rng.integers(1, 12))
        if k == 1:
            points = a[None]
        else:
            t = np.sort(rng.uniform(0, 1, k))
            t[0], t[-1] = 0, 1
            bend = np.r_[0, rng.normal(0, 1, k - 2), 0][:, None] * rng.normal(0, 1, 3)
            points = a + (b - a) * t[:, None] + bend
        streamlines.append((points @ affine[:3, :3].T + affine[:3, 3]).astype(np.float32))
    nib.streamlines.TckFile(nib.streamlines.Tractogram(streamlines, affine_to_rasmm=np.eye(4))).save(str(path))
    return path


def read_assignments(path: Path) -> np.ndarray:
    rows = [line.split() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return np.array(rows, dtype=np.int64).reshape(-1, 2)


def float32_lengths(streamlines) -> np.ndarray:
    """MRtrix 3.0.3's ``Tractography::length``: float32 norms summed in float32, point after point."""
    out = np.zeros(len(streamlines))
    for i, s in enumerate(streamlines):
        d = np.diff(np.asarray(s, np.float32), axis=0)
        norms = np.sqrt((d * d).sum(axis=1, dtype=np.float32)).astype(np.float32)
        acc = np.float32(0)
        for v in norms:
            acc = np.float32(acc + v)
        out[i] = float(acc)
    return out


def compare(work: Path, inputs: dict, mrtrix: str) -> tuple[list[dict], dict]:
    rows, totals = [], {"streamlines": 0, "mismatches": 0, "count": 0.0, "length": 0.0, "invlength": 0.0,
                        "length_f32_emulated": 0.0, "invlength_f32_emulated": 0.0}
    parcellation = load_parcellation(inputs["parc"])
    for name, tck in inputs["tracts"].items():
        streamlines, _ = read_streamlines_rasmm(tck)
        lengths32 = float32_lengths(streamlines)
        for case, mr_opts, dt_opts, scales in CASES:
            for scale in scales:
                tag = f"{name}_{case}_{scale}"
                mr_csv, mr_assign = work / f"mr_{tag}.csv", work / f"mr_{tag}_assign.txt"
                dt_csv, dt_assign = work / f"dt_{tag}.csv", work / f"dt_{tag}_assign.txt"
                subprocess.run([mrtrix, "-quiet", "-force", str(tck), str(inputs["parc"]), str(mr_csv), "-symmetric",
                                *mr_opts, *MRTRIX_SCALE[scale], "-out_assignments", str(mr_assign)],
                               check=True, capture_output=True, text=True)
                difftract("connectome", str(tck), "--labels", str(inputs["parc"]), "--lut", str(inputs["lut"]),
                          "--out", str(dt_csv), *dt_opts, "--scale", scale, "--assignments", str(dt_assign),
                          "--force")
                a, b = read_assignments(dt_assign), read_assignments(mr_assign)
                mismatches = int((a != b).any(axis=1).sum()) if a.shape == b.shape else max(len(a), len(b))
                m, r = read_matrix(dt_csv), read_matrix(mr_csv)
                if m.shape != r.shape:
                    max_abs = max_rel = float("inf")
                else:
                    diff = np.abs(m - r)
                    max_abs = float(diff.max())
                    max_rel = float((diff / np.maximum(np.abs(r), 1e-300)).max()) if max_abs else 0.0
                row = {"tractogram": name, "case": case, "scale": scale, "streamlines": len(a),
                       "assigned": int((a > 0).all(axis=1).sum()), "mismatches": mismatches,
                       "sum_difftract": float(m.sum()), "sum_mrtrix": float(r.sum()),
                       "max_abs_diff": max_abs, "max_rel_diff": max_rel}
                if scale != "count" and m.shape == r.shape:   # MRtrix's float32 lengths, redone here
                    values = lengths32 if scale == "length" else np.where(lengths32 > 0, 1 / np.where(
                        lengths32 > 0, lengths32, 1), 0.0)
                    emulated = pair_matrix(b, parcellation.n_nodes, values)[1:, 1:]
                    row["max_rel_diff_f32_emulated"] = float((np.abs(emulated - r) / np.maximum(np.abs(r), 1e-300))
                                                             [r != 0].max())
                    key = f"{scale}_f32_emulated"
                    totals[key] = max(totals[key], row["max_rel_diff_f32_emulated"])
                rows.append(row)
                totals["streamlines"] += len(a)
                totals["mismatches"] += mismatches
                totals[scale] = max(totals[scale], max_abs if scale == "count" else max_rel)
                print(f"  {name:9}{case:9}{scale:10}{len(a):>6}{row['assigned']:>7}{mismatches:>6}"
                      f"{row['sum_difftract']:>16.8g}{row['sum_mrtrix']:>16.8g}{max_abs:>11.3g}{max_rel:>11.3g}"
                      + (f"{row['max_rel_diff_f32_emulated']:>11.3g}" if "max_rel_diff_f32_emulated" in row else ""),
                      flush=True)
    return rows, totals


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="working folder, kept (default: a temporary one, removed)")
    args, check = parse_args(parser, "bench_connectome", TARGETS, argv)
    figures: dict = {}
    mrtrix = shutil.which("tck2connectome")
    if mrtrix is None:
        reason = "tck2connectome not found on the PATH (Debian/Ubuntu: apt install mrtrix3); comparison skipped"
        print(f"SKIPPED: {reason}")
        for t in TARGETS:
            check.unmeasured(t.name, reason)
        figures["skipped"] = reason
        check.finish(figures)
    check.measure("mrtrix_found", True)
    version = subprocess.run([mrtrix, "-version"], capture_output=True, text=True).stdout.splitlines()[0].strip("= ")
    figures["mrtrix"] = version
    temporary = None
    if args.work is None:
        temporary = tempfile.TemporaryDirectory(prefix="bench_connectome_")
        work = Path(temporary.name)
    else:
        work = args.work
        work.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        with check.measuring("streamlines_compared", "assignment_mismatches", "count_max_abs_diff",
                             "length_max_rel_diff", "invlength_max_rel_diff", what="comparison"):
            inputs = make_inputs(work)
            print(f"{version}; fibercup phantom, grid {inputs['grid']} at {inputs['voxel_mm']} mm; parcellation of "
                  f"{inputs['nodes']} ROI labels ({inputs['labelled_voxels']} voxels, {inputs['roi_overlap_voxels']} "
                  "overlapping)")
            print(f"  {'tracto':9}{'assign':9}{'scale':10}{'n':>6}{'both':>7}{'mism':>6}{'sum difftract':>16}"
                  f"{'sum mrtrix':>16}{'max abs':>11}{'max rel':>11}{'rel f32emu':>11}")
            rows, totals = compare(work, inputs, mrtrix)
            figures.update({"rows": rows, "totals": totals, "seconds": round(time.perf_counter() - start, 1),
                            "inputs": {k: v for k, v in inputs.items() if k not in ("parc", "lut", "tracts")}})
            print(f"{totals['streamlines']} streamline assignments compared, {totals['mismatches']} differ; count "
                  f"matrices max |diff| {totals['count']:g}; length / invlength max relative diff "
                  f"{totals['length']:.3g} / {totals['invlength']:.3g} (with MRtrix's float32 lengths redone: "
                  f"{totals['length_f32_emulated']:.3g} / {totals['invlength_f32_emulated']:.3g})")
            check.measure("streamlines_compared", totals["streamlines"])
            check.measure("assignment_mismatches", totals["mismatches"])
            check.measure("count_max_abs_diff", totals["count"])
            check.measure("length_max_rel_diff", totals["length"])
            check.measure("invlength_max_rel_diff", totals["invlength"])
    finally:
        if temporary is not None:
            temporary.cleanup()
    check.finish(figures)


if __name__ == "__main__":
    main()
