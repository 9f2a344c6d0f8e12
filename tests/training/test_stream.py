"""The subject stream: subjects as pure functions of their seeds, the bounded pool and its
background worker (prefetch, failures), and the seed plan across epochs and DDP ranks."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from difftract.errors import ConfigError
from difftract.models.ddtracking import data as dd
from difftract.models.qcgdti import data as qcg
from difftract.phantom import Tissue, save_phantom, simulate
from difftract.phantom.splits import (STREAM_VALIDATION_OFFSET, TEST_SEED_START, is_test_seed, training_seed,
                                     validation_seed)
from difftract.training.pool import StreamError, SubjectPool, evict
from difftract.training.recipe import SubjectRecipe, phantom_recipe
from difftract.training.stream import StreamDataset, StreamPlan

TINY = phantom_recipe("crossing", {"snr": None, "streamlines_per_bundle": 4})
DD = SubjectRecipe(TINY, dd.phantom_arrays, {"step": 1.0})


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_phantom_recipe_takes_json_like_settings():
    config = phantom_recipe("crossing", {"bvals": [1000, 2000], "ndirs": [30, 30], "tissue": {"d_par": 0.002},
                                         "snr": None})
    assert config.bvals == (1000, 2000) and config.ndirs == (30, 30) and config.tissue.d_par == 0.002
    assert config.tissue.d_perp == Tissue().d_perp and config.snr is None
    for bad, message in (({"seed": 1}, "unknown phantom setting"), ({"tissue": {"nope": 1}}, "tissue"),
                         ({"snr": -1}, "snr")):
        with pytest.raises(ConfigError, match=message):
            phantom_recipe("crossing", bad)


def test_a_subject_is_a_pure_function_of_its_seed():
    first = DD.make(5)
    assert same(first, DD.make(5)) and not same(first, DD.make(6))
    noisy = SubjectRecipe(phantom_recipe("crossing", {"streamlines_per_bundle": 4}), dd.phantom_arrays, {"step": 1.0})
    assert noisy.key != DD.key and not same(noisy.make(5), first)   # the recipe is part of the subject


def test_streamed_arrays_match_the_phantom_folder_path(tmp_path):
    """In memory (the stream) or written and read back (SUBJECT_DIR training): the same subject."""
    config = phantom_recipe("crossing", {"streamlines_per_bundle": 4, "ndirs": 64})
    phantom = simulate(config)
    folder = save_phantom(phantom, tmp_path / "s")
    ddt, ddt_dir = dd.phantom_arrays(phantom), dd.prepare_subject(folder)
    # the folder stores bvecs as text and streamlines in RAS mm: float32-level differences
    np.testing.assert_allclose(ddt["sh"], ddt_dir.sh.numpy(), rtol=1e-4, atol=1e-4 * np.abs(ddt["sh"]).max())
    np.testing.assert_allclose(ddt["points"], np.concatenate(ddt_dir.streamlines), atol=1e-4)
    # QCG-DTI: the stream's worker draws the flexible sets (seeded by the phantom's seed) as the loader would
    q = qcg.subject_from_arrays("s", qcg.phantom_arrays(phantom, pool_size=20), patch=8)
    q_dir = qcg.prepare_subject(folder, patch=8, pool_size=20, seed=config.seed)
    np.testing.assert_array_equal(q.mask, q_dir.mask)
    np.testing.assert_allclose(q.reference, q_dir.reference, rtol=1e-3, atol=1e-3 * np.abs(q.reference).max())
    assert [s.indices for s in q.pool] == [s.indices for s in q_dir.pool] and q.fixed.indices == q_dir.fixed.indices


def test_pool_is_bounded_and_evicts_the_least_recently_used(tmp_path):
    pool = SubjectPool(DD, tmp_path, max_subjects=2, workers=0)
    first = pool.get(1)
    pool.get(2)
    os.utime(pool.path(2), ns=(1, 1))             # 2 is older than 1 ...
    pool.get(3)                                  # ... so 3 evicts 2
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == sorted(pool.path(s).name for s in (1, 3))
    simulated = pool.seconds[1]
    pool.get(1)
    assert set(pool.seconds) == {1, 2, 3} and pool.seconds[1] == simulated   # 1 was read back, not simulated again
    size = pool.path(1).stat().st_size
    small = SubjectPool(DD, tmp_path, max_subjects=10, max_bytes=int(1.5 * size), workers=0)
    assert same(small.get(4), DD.make(4)) and len(list(tmp_path.glob("*.npz"))) == 1   # bytes bound
    assert same(small.get(1), first)              # evicted, then simulated again identically
    with pytest.raises(StreamError, match="more than the pool's limit"):
        SubjectPool(DD, tmp_path / "tiny", max_bytes=1000, workers=0).get(1)
    with pytest.raises(ConfigError):
        SubjectPool(DD, tmp_path, max_subjects=0)


def test_background_workers_prefetch_and_report(tmp_path):
    with SubjectPool(DD, tmp_path, max_subjects=8, workers=2) as pool:
        pool.want([11, 12, 13])
        deadline = time.monotonic() + 120
        while not all(pool.path(s).is_file() for s in (11, 12, 13)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(pool.path(s).is_file() for s in (11, 12, 13))   # written before anyone asked for them
        assert same(pool.get(12), DD.make(12)) and same(pool.get(14), DD.make(14))
        workers = list(pool._processes)
        assert len(workers) == 2 and all(w.is_alive() for w in workers)
    assert not any(w.is_alive() for w in workers) and {11, 12, 13, 14} <= set(pool.seconds)


def test_worker_failures_are_errors_not_hangs(tmp_path):
    with pytest.raises(ConfigError, match="unknown phantom preset"):   # refused before any worker starts
        phantom_recipe("no-such-preset")
    broken = SubjectRecipe(phantom_recipe("crossing", {"angles": [0.0]}), dd.phantom_arrays, {"step": 1.0})
    with SubjectPool(broken, tmp_path / "a") as pool:
        with pytest.raises(StreamError, match="seed 1 could not be simulated: crossing angles"):
            pool.get(1)
    with SubjectPool(DD, tmp_path / "b") as pool:
        pool.want([1])
        os.kill(pool._processes[0].pid, signal.SIGKILL)
        with pytest.raises(StreamError, match="worker died"):
            pool.get(2)
    with SubjectPool(DD, tmp_path / "c", timeout=0.3) as pool:   # the worker alone takes longer to start
        with pytest.raises(StreamError, match="not ready after 0.3 s"):
            pool.get(1)


def test_ranks_and_epochs_never_share_subjects():
    world, epochs = 3, 4
    plans = [StreamPlan(base=2, subjects_per_epoch=5, val_subjects=3, rank=r, world_size=world) for r in range(world)]
    drawn = [s for p in plans for e in range(1, epochs + 1) for s in p.seeds(e)]
    assert len(drawn) == len(set(drawn)) == world * epochs * 5
    val = plans[0].validation_seeds()
    assert val == plans[2].validation_seeds() and not set(val) & set(drawn)
    assert not any(is_test_seed(s) or s < TEST_SEED_START for s in drawn + val)
    assert plans[1].seeds(2)[0] == training_seed(2, 5, 1, world)
    other = StreamPlan(base=3, subjects_per_epoch=5, world_size=world)
    assert not set(other.seeds(1)) & set(drawn) and validation_seed(3, 0) not in drawn
    # the last training seed of a base sits just below its first validation seed, and no further
    last = STREAM_VALIDATION_OFFSET // 2 - 1
    assert training_seed(2, last, 1, 2) == validation_seed(2, 0) - 1
    with pytest.raises(ConfigError, match="beyond"):
        training_seed(2, last + 1, 0, 2)
    fixed = StreamPlan(subjects_per_epoch=2, epochs_per_subject=0)
    assert fixed.seeds(1) == fixed.seeds(9)
    slow = StreamPlan(subjects_per_epoch=2, epochs_per_subject=2)
    assert slow.seeds(1) == slow.seeds(2) != slow.seeds(3) == slow.seeds(4)
    with pytest.raises(ConfigError):
        StreamPlan(rank=2, world_size=2)
    with pytest.raises(ConfigError):
        StreamPlan(subjects_per_epoch=0)


def test_ranks_of_several_nodes_take_their_global_rank(monkeypatch):
    """torchrun --nnodes 2 --nproc-per-node 4: rank 5 is node 1's local rank 1; the plan uses the global rank."""
    from difftract.training.stream import distributed_rank

    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed_rank() == (5, 8)
    plans = [StreamPlan(subjects_per_epoch=3, rank=r, world_size=8) for r in range(8)]
    drawn = [s for p in plans for e in (1, 2) for s in p.seeds(e)]
    assert len(drawn) == len(set(drawn)) == 8 * 2 * 3       # no subject on two ranks, of one node or two
    assert set(plans[5].seeds(1)).isdisjoint(plans[1].seeds(1))   # local rank 1 of each node: distinct


def test_stream_dataset_switches_subjects_per_epoch(tmp_path):
    plan = StreamPlan(subjects_per_epoch=2)
    pool = SubjectPool(DD, tmp_path, workers=0)
    build = lambda subjects: dd.StreamlineDataset(subjects, 6, seed=0, window=8)   # noqa: E731
    data = StreamDataset(pool, plan.seeds, lambda seed, arrays: dd.subject_from_arrays(str(seed), arrays), build, 6)
    data.set_epoch(1)
    assert data.epoch_record() == {"subject_seeds": plan.seeds(1)} and len(data) == 6
    first = data[1]
    data.set_epoch(2)
    assert [s.name for s in data.data.subjects] == [str(s) for s in plan.seeds(2)]
    data.set_epoch(1)   # back to epoch 1 (a resumed run): the same samples
    assert all(torch.equal(first[k], data[1][k]) for k in first)


def test_eviction_and_start_up_touch_only_the_pools_files(tmp_path):
    """A pool folder shared with other files (a feature cache, data): only pool files go."""
    mine = [tmp_path / f"s{seed}-0123456789ab.npz" for seed in (1, 2, 3)]
    theirs = [tmp_path / "features.npz", tmp_path / "s1-notapoolfile.npz"]
    for k, path in enumerate(mine + theirs):
        np.savez(path, x=np.zeros(4))
        os.utime(path, ns=(k * 10**9, k * 10**9))
    removed = evict(tmp_path, keep=1, keep_bytes=10**9)
    assert sorted(removed) == sorted(mine[:2])
    assert all(p.is_file() for p in theirs + mine[2:])
    # a staging folder left by a killed worker (its owner is gone) is removed when a pool opens
    stale = tmp_path / f".{mine[0].name}.tmp-999999999-abcd"
    stale.mkdir()
    SubjectPool(DD, tmp_path, workers=0)
    assert not stale.exists() and all(p.is_file() for p in theirs)


def test_streams_alternate_presets_by_seed():
    from difftract.training.stream import stream_presets

    assert stream_presets("random, brain-random") == ("random", "brain-random")
    with pytest.raises(ConfigError, match="unknown phantom preset"):
        stream_presets("random,nope")
    recipe = SubjectRecipe(TINY, dd.phantom_arrays, {"step": 1.0}, presets=("crossing", "random"))
    assert [recipe.config(s).preset for s in (10, 11, 12)] == ["crossing", "random", "crossing"]
    assert recipe.config(11).seed == 11 and recipe.describe()["presets"] == ["crossing", "random"]
    assert SubjectRecipe(TINY, dd.phantom_arrays).config(11).preset == "crossing"
    assert recipe.key != SubjectRecipe(TINY, dd.phantom_arrays, {"step": 1.0}).key


def test_qcg_streamed_subjects_learn_the_noise_free_tensor():
    truth = qcg.truth_scheme()
    template = phantom_recipe("crossing", {"snr": 10.0, "bvals": [1000], "ndirs": [64], "nb0": 1,
                                           "noise_free_scheme": truth})
    phantom = simulate(template)
    arrays = qcg.phantom_arrays(phantom, pool_size=4)
    exact = qcg.reference_tensor(phantom.noise_free, *truth, phantom.mask)
    noisy = qcg.reference_tensor(phantom.data, phantom.bvals, phantom.bvecs, phantom.mask)
    np.testing.assert_array_equal(arrays["reference"], exact)
    assert np.abs(noisy - exact)[phantom.mask].mean() > 1e-5   # what the noisy fit would have taught
    assert len(arrays["six_indices"]) == 4
    # the target does not depend on the noise: another SNR, the same reference, other data
    quieter = qcg.phantom_arrays(simulate(replace(template, snr=40.0)), pool_size=4)
    np.testing.assert_array_equal(quieter["reference"], arrays["reference"])
    assert not np.array_equal(quieter["data"], arrays["data"])
