"""load_dwi in bounded memory: only the mask's rows are held, the fits read them as they read
the whole array, the peak stays near the rows' size, and a truncated file still fails by name."""

from __future__ import annotations

import gc
import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from difftract.errors import ConfigError, InputError
from difftract.io import load_dwi
from difftract.reconst import CsdModel, SHModel, TensorModel
from difftract.reconst.voxels import MaskedSignal


def _write(path, data, affine=None):
    affine = np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _tissue_scan(tmp_path):
    """A 10 x 9 x 6 two-shell scan of prolate tensors turning across the grid, int16 with a scale factor."""
    rng = np.random.default_rng(3)
    shape = (10, 9, 6)
    dirs = rng.normal(size=(60, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    bvals = np.r_[0, 0, 0, np.full(30, 1000.0), np.full(30, 2000.0)]
    bvecs = np.r_[np.zeros((3, 3)), dirs]
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    e1 = np.stack([np.cos(2 * y), np.sin(2 * y), 0.3 * z], axis=-1)
    e1 /= np.linalg.norm(e1, axis=-1, keepdims=True)
    cos2 = np.einsum("xyzi,ni->xyzn", e1, bvecs) ** 2
    signal = 1000 * np.exp(-bvals * (0.3e-3 + 1.4e-3 * cos2)) + rng.normal(0, 10, size=shape + (len(bvals),))
    img = nib.Nifti1Image(np.abs(signal).round().astype(np.int16), np.diag([2.0, 2.0, 2.0, 1.0]))
    img.header.set_slope_inter(0.5, 0.0)            # scaled on reading, as many scanners write
    nib.save(img, str(tmp_path / "dwi.nii.gz"))
    (tmp_path / "dwi.bval").write_text(" ".join(f"{b:g}" for b in bvals) + "\n")
    (tmp_path / "dwi.bvec").write_text("\n".join(" ".join(f"{v:.6f}" for v in row) for row in bvecs.T) + "\n")
    brain = (x ** 2 + y ** 2 + z ** 2) < 1.1
    _write(tmp_path / "mask.nii.gz", brain.astype(np.uint8))
    return tmp_path, brain


@pytest.fixture(scope="module")
def tissue(tmp_path_factory):
    folder, brain = _tissue_scan(tmp_path_factory.mktemp("tissue"))
    files = [folder / n for n in ("dwi.nii.gz", "dwi.bval", "dwi.bvec")]
    masked = load_dwi(*files, folder / "mask.nii.gz")
    # the old path: the whole image read at once as float32 (header scaling applied)
    full = nib.load(str(folder / "dwi.nii.gz")).get_fdata(dtype=np.float32)
    return {"files": files, "brain": brain, "dwi": masked, "full": full, "folder": folder}


def test_holds_only_the_rows_of_the_mask(tissue):
    dwi, brain, full = tissue["dwi"], tissue["brain"], tissue["full"]
    assert isinstance(dwi.signal, MaskedSignal)
    assert dwi.signal.rows.shape == (brain.sum(), full.shape[3]) and dwi.signal.rows.dtype == np.float32
    np.testing.assert_array_equal(dwi.signal.rows, full[brain])
    assert dwi.shape == full.shape[:3] and dwi.n_volumes == full.shape[3]
    # the 4D array for old callers: the file inside the mask, zeros outside (documented)
    np.testing.assert_array_equal(dwi.data[brain], full[brain])
    assert not dwi.data[~brain].any()
    assert dwi.data_range == (float(full.min()), float(full.max()))   # over the whole image, background too


def test_without_a_mask_every_voxel_is_held_and_data_is_a_view(tissue):
    dwi = load_dwi(*tissue["files"])
    assert dwi.signal.complete
    np.testing.assert_array_equal(dwi.data, tissue["full"])
    assert np.shares_memory(dwi.data, dwi.signal.rows)       # a reshape of the rows, not a second copy


@pytest.mark.parametrize("fit", ["dti", "sh", "csd"])
def test_fits_on_the_held_rows_equal_fits_on_the_whole_array(tissue, fit):
    dwi, full, brain = tissue["dwi"], tissue["full"], tissue["brain"]
    model = {"dti": lambda: TensorModel(dwi.gtab), "sh": lambda: SHModel(dwi.gtab, lmax=6),
             "csd": lambda: CsdModel(dwi.gtab, lmax=8)}[fit]()   # CSD: auto response from the b0s + b=2000
    ours, old = model.fit(dwi.signal, dwi.mask), model.fit(full, brain)
    pairs = [(ours.evals, old.evals), (ours.evecs, old.evecs)] if fit == "dti" else [(ours.coeffs, old.coeffs)]
    for a, b in pairs:
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    if fit == "csd":
        assert ours.params["response"] == old.params["response"]


def test_a_sub_mask_is_fitted_from_the_held_rows_and_a_larger_one_refused(tissue):
    dwi, full, brain = tissue["dwi"], tissue["full"], tissue["brain"]
    wm = brain.copy()
    wm[::2] = False                                          # a white-matter-like part of the brain
    model = TensorModel(dwi.gtab)
    np.testing.assert_allclose(model.fit(dwi.signal, wm).evals, model.fit(full, wm).evals, rtol=1e-12, atol=1e-15)
    with pytest.raises(ConfigError, match=r"reaches \d+ voxel\(s\) outside"):
        model.fit(dwi.signal, np.ones(brain.shape, bool))


def _peak_bytes(fn) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        result = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    del result
    return peak


def test_peak_memory_is_the_rows_plus_a_few_volumes(tmp_path):
    """40 x 40 x 40 x 60 int16 .nii.gz, a 10 % mask (6,400 voxels).

    Held rows: 6,400 x 60 x 4 B = 1.5 MB; one volume is 64,000 voxels: 128 kB as int16,
    256 kB as float32. Bound: rows + 12 float32 volumes = 4.6 MB (measured peak 2.7 MB).
    The whole image as float32 is 15.4 MB (the old read peaked at 23 MB: the int16 image
    and its float32 copy), so the old full read cannot pass it (measured here too).
    """
    rng = np.random.default_rng(0)
    shape, n = (40, 40, 40), 60
    _write(tmp_path / "dwi.nii.gz", rng.integers(100, 2000, size=shape + (n,)).astype(np.int16))
    mask = np.zeros(shape, bool)
    mask.flat[rng.choice(mask.size, mask.size // 10, replace=False)] = True
    _write(tmp_path / "mask.nii.gz", mask.astype(np.uint8))
    (tmp_path / "dwi.bval").write_text(" ".join(["0"] * 4 + ["1000"] * (n - 4)) + "\n")
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    dirs[:4] = 0
    (tmp_path / "dwi.bvec").write_text("\n".join(" ".join(f"{v:.6f}" for v in row) for row in dirs.T) + "\n")
    files = [tmp_path / f for f in ("dwi.nii.gz", "dwi.bval", "dwi.bvec", "mask.nii.gz")]

    rows_bytes = int(mask.sum()) * n * 4
    bound = rows_bytes + 12 * mask.size * 4
    peak = _peak_bytes(lambda: load_dwi(*files))
    assert peak < bound, f"load_dwi peaked at {peak / 1e6:.2f} MB, bound {bound / 1e6:.2f} MB"
    old = _peak_bytes(lambda: nib.load(str(files[0])).get_fdata(dtype=np.float32))
    assert old > bound, f"the whole-image read peaked at {old / 1e6:.2f} MB, under the bound {bound / 1e6:.2f} MB"


def test_a_file_truncated_in_its_last_volumes_fails_with_its_name(tissue, tmp_path):
    raw = (tissue["folder"] / "dwi.nii.gz").read_bytes()
    cut = tmp_path / "dwi.nii.gz"
    cut.write_bytes(raw[: len(raw) * 9 // 10])               # the header and most volumes are still readable
    with pytest.raises(InputError, match="truncated or corrupt") as err:
        load_dwi(cut, *tissue["files"][1:])
    assert str(cut) in str(err.value)


def test_nonfinite_values_are_counted_over_the_whole_image_and_zeroed_in_the_rows(tmp_path):
    data = np.full((4, 4, 3, 5), 500.0, np.float32)
    data[0, 0, 0, 1] = np.nan           # outside the mask: still counted, as a whole-image check would
    data[2, 2, 1, 3] = np.inf           # inside
    _write(tmp_path / "dwi.nii.gz", data)
    mask = np.zeros((4, 4, 3), np.uint8)
    mask[1:3, 1:3] = 1
    _write(tmp_path / "mask.nii.gz", mask)
    (tmp_path / "dwi.bval").write_text("0 1000 1000 1000 1000\n")
    (tmp_path / "dwi.bvec").write_text("0 1 0 0 0.6\n0 0 1 0 0.8\n0 0 0 1 0\n")
    files = [tmp_path / f for f in ("dwi.nii.gz", "dwi.bval", "dwi.bvec", "mask.nii.gz")]
    with pytest.raises(InputError, match=r"2 NaN/Inf value\(s\) in 2 voxel\(s\)"):
        load_dwi(*files)
    with pytest.warns(UserWarning, match="set 2 NaN/Inf"):
        dwi = load_dwi(*files, zero_nonfinite=True)
    assert np.isfinite(dwi.signal.rows).all() and dwi.data[2, 2, 1, 3] == 0
