"""Tracking sharded over torchrun ranks: the merged file equals a single process's, streamline for streamline.

Two CPU processes (gloo) run ``difftract track`` (this file, run as a script under
torchrun, calls the CLI's ``main`` on every rank) for ``det`` and ``prob``, and a third time
with rank 1 failing; the single-process runs are made in this process with the same
``--seed`` and ``--chunk-size``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

CHUNK = "150"       # 1,872 seeds: 13 chunks, 6 on rank 0 and 7 on rank 1


def track_args(phantom: Path, fod: Path) -> list[str]:
    return [str(phantom / "dwi.nii.gz"), str(phantom / "dwi.bval"), str(phantom / "dwi.bvec"),
            "--mask", str(phantom / "mask.nii.gz"), "--stop-mask", str(phantom / "wm.nii.gz"), "--sh", str(fod),
            "--seeds-per-voxel", "2", "--seed", "3", "--chunk-size", CHUNK, "--device", "cpu"]


def job(phantom: str, fod: str, out: str) -> None:
    """One rank's part (under torchrun): det, prob, then a run where rank 1 fails while tracking."""
    from difftract.cli import main
    from difftract.errors import ResourceError
    from difftract.tracking.tracker import Tracker

    rank, out = int(os.environ["RANK"]), Path(out)
    args = track_args(Path(phantom), Path(fod))
    codes = [main(["-q", "track", *args, "--method", m, "--out", str(out / f"{m}.trx")]) for m in ("det", "prob")]
    if rank == 1:
        def fail(self, seeds, generator, getter):
            raise ResourceError("injected failure")
        Tracker._track_chunk = fail
    codes.append(main(["-q", "track", *args, "--out", str(out / "failed.trx")]))
    (out / f"codes{rank}.json").write_text(json.dumps(codes))


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """A small crossing (936 white-matter voxels) and its CSD fODF, written once."""
    from dipy.core.gradients import gradient_table

    from difftract.io.nifti import save_nifti
    from difftract.phantom import PhantomConfig, save_phantom, simulate
    from difftract.reconst.csd import CsdModel

    folder = tmp_path_factory.mktemp("shards")
    p = simulate(PhantomConfig(preset="crossing", seed=1, streamlines_per_bundle=20))
    save_phantom(p, folder / "ph")
    fit = CsdModel(gradient_table(p.bvals, bvecs=p.bvecs), lmax=6, legacy=False).fit(p.data, p.wm, progress=False)
    fod = save_nifti(folder / "fod.nii.gz", fit.coeffs.astype(np.float32), p.affine,
                     sidecar={"sh_basis": "descoteaux07"})
    return folder / "ph", Path(fod)


def test_two_ranks_write_the_single_process_tractogram(phantom, cli, tmp_path):
    import torch

    from difftract.io.tractogram import load_tractogram

    ph, fod = phantom
    multi = tmp_path / "multi"
    multi.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           __file__, str(ph), str(fod), str(multi)],            # --standalone: a free port
                          env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # as torchrun's ranks (OMP_NUM_THREADS=1), and no oversubscribed cores
    try:
        singles = [cli("-q", "track", *track_args(ph, fod), "--method", m, "--out", tmp_path / f"{m}.trx")
                   for m in ("det", "prob")]
    finally:
        torch.set_num_threads(threads)
    for method, res in zip(("det", "prob"), singles):
        single = tmp_path / f"{method}.trx"
        assert res.returncode == 0, res.stderr
        a, b = load_tractogram(single), load_tractogram(multi / f"{method}.trx")
        assert len(a) > 1000 and len(a) == len(b)
        assert all(np.array_equal(x, y) for x, y in zip(a.streamlines, b.streamlines)), method
        record = json.loads((multi / f"{method}.json").read_text())
        assert record["ranks"] == 2 and record["n_seeds"] == 1872 and record["n_streamlines"] == len(a)
        assert [s["chunks"] for s in record["shards"]] == [[0, 6], [6, 13]]
        assert sum(s["n_streamlines"] for s in record["shards"]) == len(a)
        assert record["params"]["chunk_size"] == int(CHUNK)
    # both tractograms differ: prob really draws (so equality above is not det twice)
    det, prob = (load_tractogram(multi / f"{m}.trx").streamlines for m in ("det", "prob"))
    assert len(det) != len(prob) or not all(np.array_equal(x, y) for x, y in zip(det, prob))
    # rank 1 failed in the third run: both ranks report an error, and nothing is left behind
    codes = [json.loads((multi / f"codes{r}.json").read_text()) for r in (0, 1)]
    assert codes == [[0, 0, 2], [0, 0, 2]]
    assert "rank 1 failed" in proc.stderr and "injected failure" in proc.stderr
    assert sorted(p.name for p in multi.iterdir()) == ["codes0.json", "codes1.json", "det.json", "det.trx",
                                                        "prob.json", "prob.trx"]


def test_shards_are_contiguous_balanced_ranges_in_rank_order():
    from difftract.pipeline.shards import chunk_ranges

    for n_chunks in range(0, 12):
        for world in range(1, 6):
            ranges = chunk_ranges(n_chunks, world)
            assert [k for r in ranges for k in r] == list(range(n_chunks))
            sizes = [len(r) for r in ranges]
            assert max(sizes) - min(sizes) <= 1


def test_rank_0_refuses_a_shard_it_cannot_see_or_that_is_incomplete(tmp_path):
    from difftract.errors import DifftractError
    from difftract.pipeline.shards import Shard, _read_shard

    shard = Shard(rank=1, device="cpu", chunks=(3, 6), n_streamlines=2, n_points=5, dtype="<f4")
    with pytest.raises(DifftractError, match="rank 1's shard is missing .* every machine shares"):
        _read_shard(tmp_path, shard)
    np.array([2, 3], "<i8").tofile(tmp_path / "rank1.lengths")
    np.zeros((4, 3), "<f4").tofile(tmp_path / "rank1.points")          # one point short
    with pytest.raises(DifftractError, match="incomplete"):
        _read_shard(tmp_path, shard)
    np.zeros((5, 3), "<f4").tofile(tmp_path / "rank1.points")
    counts, points = _read_shard(tmp_path, shard)
    assert counts.tolist() == [2, 3] and points.shape == (5, 3)


def test_a_subset_of_chunks_gives_that_part_of_the_whole_run():
    """Tracker.track(chunks=...) keeps each chunk's global index, hence its random draws."""
    import torch

    from difftract.errors import ConfigError
    from difftract.tracking.getters import make_getter
    from difftract.tracking.sh_field import SHField
    from difftract.tracking.stopping import BinaryCriterion
    from difftract.tracking.tracker import Tracker, TrackingParams

    rng = np.random.default_rng(0)
    sh = 0.1 * rng.standard_normal((10, 10, 10, 15)).astype(np.float32)   # lmax 4: lobes for prob to draw from
    sh[..., 0] = 1.0
    mask = np.zeros((10, 10, 10), bool)
    mask[1:-1, 1:-1, 1:-1] = True
    tracker = Tracker(make_getter("prob", sh=SHField(sh, legacy=False), max_angle=60), BinaryCriterion(mask),
                      [1.0, 1.0, 1.0], TrackingParams(step_mm=0.5, min_len_mm=1, max_len_mm=20), chunk_size=40)
    seeds = torch.as_tensor(rng.uniform(2, 7, size=(190, 3)))
    whole = list(tracker.track(seeds, seed=5))
    parts = list(tracker.track(seeds, seed=5, chunks=range(2, 5)))
    assert tracker.n_chunks(len(seeds)) == len(whole) == 5 and sum(map(len, whole)) > 100
    for a, b in zip(whole[2:], parts, strict=True):
        assert torch.equal(a.points, b.points) and torch.equal(a.seed_index, b.seed_index)
    shifted = list(tracker.track(seeds[80:], seed=5))    # the same seeds as chunks 2.. but as chunks 0..: other draws
    assert not torch.equal(shifted[0].points, whole[2].points)
    with pytest.raises(ConfigError, match="chunk indices"):
        list(tracker.track(seeds, chunks=[5]))


if __name__ == "__main__":
    job(*sys.argv[1:4])
