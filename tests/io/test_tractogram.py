"""Tests for difftract.io.tractogram: .trk/.tck/.trx in RAS mm, voxel space in memory."""

from __future__ import annotations

import json
import os
import struct
import types
import warnings
import zipfile

import nibabel as nib
import numpy as np
import pytest
from nibabel.streamlines import ArraySequence, TckFile, TrkFile
from nibabel.streamlines.trk import Field
from dipy.core.gradients import gradient_table
from trx import trx_file_memmap as tmm

from difftract.errors import ConfigError, DifftractWarning, InputError, OutputExistsError
from difftract.io.dwi import DWI
from difftract.io.sidecar import sidecar_path
from difftract.io.tractogram import Tractogram, load_tractogram, reference_grid, save_tractogram

FORMATS = [".trk", ".tck", ".trx"]
DIMS = (20, 22, 18)


def _tg_rotation(angle_deg: float, axis: int) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    rot = np.eye(3)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    return rot


def _tg_affine(kind: str) -> np.ndarray:
    """'ras': positive determinant; 'las': negative determinant. Both rotated and offset."""
    aff = np.eye(4)
    if kind == "ras":
        aff[:3, :3] = _tg_rotation(7.0, 2) @ _tg_rotation(-4.0, 0) @ np.diag([2.0, 1.5, 2.5])
        aff[:3, 3] = [-21.3, 14.7, -9.25]
    else:
        aff[:3, :3] = _tg_rotation(-6.0, 1) @ _tg_rotation(3.0, 2) @ np.diag([-1.25, 1.25, 2.0])
        aff[:3, 3] = [30.5, -18.2, 11.1]
    return aff


AFFINES = ["ras", "las"]


def _tg_streamlines(n: int = 12, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        start = rng.uniform(3, 14, size=3)
        steps = rng.normal(scale=0.4, size=(int(rng.integers(2, 30)), 3))
        out.append((start + np.cumsum(steps, axis=0)).astype(np.float32))
    return out


def _tg_make(kind: str = "las", n: int = 12, **data) -> Tractogram:
    return Tractogram(ArraySequence(_tg_streamlines(n)), _tg_affine(kind), DIMS, **data)


def _tg_nifti(tmp_path, kind: str, dims=DIMS):
    path = tmp_path / f"ref_{kind}.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(dims, np.float32), _tg_affine(kind)), str(path))
    return path


def _tg_assert_same_points(a: ArraySequence, b: ArraySequence, atol: float = 1e-4) -> None:
    assert len(a) == len(b)
    for sa, sb in zip(a, b):
        assert sa.shape == sb.shape
        np.testing.assert_allclose(sa, sb, atol=atol, rtol=0)


def _tg_leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("kind", AFFINES)
@pytest.mark.parametrize("ext", FORMATS)
def test_round_trip_points_counts_lengths(tmp_path, ext, kind):
    tg = _tg_make(kind)
    out = save_tractogram(tg, tmp_path / f"t{ext}")
    assert out == tmp_path / f"t{ext}" and out.is_file()
    back = load_tractogram(out, reference=(tg.affine, tg.dimensions) if ext == ".tck" else None)
    assert len(back) == len(tg) == 12
    assert back.streamlines.get_data().dtype == np.float32
    _tg_assert_same_points(back.streamlines, tg.streamlines)
    np.testing.assert_allclose(back.lengths_mm(), tg.lengths_mm(), rtol=1e-5)
    np.testing.assert_allclose(back.affine, tg.affine, atol=1e-5)
    assert back.dimensions == DIMS


@pytest.mark.parametrize("kind", AFFINES)
@pytest.mark.parametrize("ext", FORMATS)
def test_voxel_centre_convention_in_file(tmp_path, ext, kind):
    aff = _tg_affine(kind)
    tg = Tractogram(ArraySequence([np.array([[0, 0, 0], [1, 2, 3]], np.float32)]), aff, DIMS)
    path = save_tractogram(tg, tmp_path / f"c{ext}")
    if ext == ".trx":
        trx = tmm.load(str(path))
        ras = np.array(trx.streamlines[0])
        trx.close()
    else:
        ras = np.asarray(nib.streamlines.load(str(path)).streamlines[0])
    np.testing.assert_allclose(ras[0], aff[:3, 3], atol=1e-4)
    np.testing.assert_allclose(ras[1], aff[:3, :3] @ [1, 2, 3] + aff[:3, 3], atol=1e-4)


@pytest.mark.parametrize("kind", AFFINES)
def test_trk_raw_voxmm_has_corner_origin(tmp_path, kind):
    """TrackVis stores (index + 0.5) * voxel size: check the bytes, not nibabel's reader."""
    tg = Tractogram(ArraySequence([np.array([[0, 0, 0], [2, 1, 4]], np.float32)]), _tg_affine(kind), DIMS)
    raw = save_tractogram(tg, tmp_path / "raw.trk").read_bytes()
    n_points = struct.unpack("<i", raw[1000:1004])[0]
    points = np.frombuffer(raw[1004:1004 + 24], dtype="<f4").reshape(2, 3)
    sizes = np.abs(np.linalg.norm(_tg_affine(kind)[:3, :3], axis=0))
    assert n_points == 2
    np.testing.assert_allclose(points[0], 0.5 * sizes, atol=1e-4)
    np.testing.assert_allclose(points[1], (np.array([2, 1, 4]) + 0.5) * sizes, atol=1e-4)


@pytest.mark.parametrize("kind", AFFINES)
def test_trk_header_grid_matches_reference(tmp_path, kind):
    ref = _tg_nifti(tmp_path, kind)
    tg = Tractogram.from_rasmm(_tg_streamlines(3), ref)
    header = TrkFile.load(str(save_tractogram(tg, tmp_path / "h.trk")), lazy_load=True).header
    img = nib.load(str(ref))
    np.testing.assert_allclose(header[Field.VOXEL_TO_RASMM], img.affine, atol=1e-5)
    assert tuple(header[Field.DIMENSIONS]) == DIMS
    np.testing.assert_allclose(header[Field.VOXEL_SIZES], img.header.get_zooms()[:3], atol=1e-5)
    assert header[Field.VOXEL_ORDER].decode() == "".join(nib.aff2axcodes(img.affine))


def test_trx_header_grid_matches_reference(tmp_path):
    tg = _tg_make("las")
    trx = tmm.load(str(save_tractogram(tg, tmp_path / "h.trx")))
    try:
        np.testing.assert_allclose(trx.header["VOXEL_TO_RASMM"], tg.affine, atol=1e-5)
        assert tuple(int(d) for d in trx.header["DIMENSIONS"]) == DIMS
        assert trx.header["NB_STREAMLINES"] == len(tg)
        assert trx.header["NB_VERTICES"] == sum(len(s) for s in tg.streamlines)
    finally:
        trx.close()


@pytest.mark.parametrize("ext", [".trk", ".trx"])
def test_data_per_streamline_and_point_round_trip(tmp_path, ext):
    tg = _tg_make("ras")
    n = len(tg)
    fa = np.linspace(0.1, 0.9, n).astype(np.float32)
    colour = np.arange(3 * n, dtype=np.float32).reshape(n, 3)
    per_point = ArraySequence([np.arange(len(s), dtype=np.float32) * (i + 1)
                               for i, s in enumerate(tg.streamlines)])
    tg = Tractogram(tg.streamlines, tg.affine, tg.dimensions,
                    data_per_streamline={"fa": fa, "colour": colour},
                    data_per_point={"t": per_point})
    back = load_tractogram(save_tractogram(tg, tmp_path / f"d{ext}"))
    assert set(back.data_per_streamline) == {"fa", "colour"}
    np.testing.assert_allclose(back.data_per_streamline["fa"], fa)
    np.testing.assert_allclose(back.data_per_streamline["colour"], colour)
    assert set(back.data_per_point) == {"t"}
    for got, want in zip(back.data_per_point["t"], per_point):
        np.testing.assert_allclose(got, want)


def test_tck_drops_data_with_warning(tmp_path):
    tg = _tg_make(data_per_streamline={"fa": np.ones(12)})
    with pytest.warns(DifftractWarning, match="fa"):
        path = save_tractogram(tg, tmp_path / "d.tck")
    back = load_tractogram(path, reference=tg)
    assert back.data_per_streamline == {} and len(back) == 12


def test_tck_without_data_does_not_warn(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_tractogram(_tg_make(), tmp_path / "quiet.tck")


@pytest.mark.parametrize("ext", FORMATS)
def test_empty_tractogram_round_trip(tmp_path, ext):
    tg = Tractogram(ArraySequence(), _tg_affine("las"), DIMS)
    assert len(tg) == 0 and tg.lengths_mm().shape == (0,)
    back = load_tractogram(save_tractogram(tg, tmp_path / f"e{ext}"), reference=tg)
    assert len(back) == 0
    assert back.streamlines.get_data().shape == (0, 3)


def test_sliced_view_is_saved_as_selected(tmp_path):
    full = _tg_make("ras")
    picked = full.streamlines[[5, 0, 3]]  # a view with reordered offsets
    tg = Tractogram(picked, full.affine, DIMS)
    back = load_tractogram(save_tractogram(tg, tmp_path / "v.trx"))
    _tg_assert_same_points(back.streamlines, ArraySequence([full.streamlines[i] for i in (5, 0, 3)]))


def test_from_rasmm_inverts_to_rasmm():
    tg = _tg_make("las")
    again = Tractogram.from_rasmm(tg.to_rasmm(), tg)
    _tg_assert_same_points(again.streamlines, tg.streamlines)
    first = np.asarray(tg.to_rasmm()[0][0], np.float64)
    np.testing.assert_allclose(first, tg.affine[:3, :3] @ tg.streamlines[0][0] + tg.affine[:3, 3], atol=1e-4)


# ---------------------------------------------------------------- lengths

def test_lengths_mm_by_hand():
    aff = np.diag([2.0, 1.0, 3.0, 1.0])
    lines = [np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]], np.float32),  # 2 + 1 + 3
             np.array([[4, 4, 4]], np.float32),                                    # one point
             np.array([[0, 0, 0], [3, 4, 0]], np.float32)]                         # (6, 4, 0)
    got = Tractogram(ArraySequence(lines), aff, (10, 10, 10)).lengths_mm()
    np.testing.assert_allclose(got, [6.0, 0.0, np.sqrt(52.0)])


def test_lengths_mm_ignores_rotation_and_sign():
    pts = [np.array([[0, 0, 0], [1, 0, 0], [1, 2, 0]], np.float32)]
    rotated = _tg_affine("las")  # voxel sizes 1.25, 1.25, 2
    got = Tractogram(ArraySequence(pts), rotated, DIMS).lengths_mm()
    np.testing.assert_allclose(got, [1.25 + 2 * 1.25], rtol=1e-6)


# ---------------------------------------------------------------- reference grids

def test_reference_grid_accepts_every_kind(tmp_path):
    path = _tg_nifti(tmp_path, "las")
    img = nib.load(str(path))
    from_path = reference_grid(path)
    dwi = DWI(np.zeros(DIMS + (2,), np.float32), img.affine, gradient_table([0.0, 1000.0], bvecs=np.eye(3)[:2]))
    for ref in (str(path), img, dwi, _tg_make("las"), (img.affine, img.shape)):
        affine, dims, sizes = reference_grid(ref)
        np.testing.assert_allclose(affine, from_path[0], atol=1e-5)
        assert dims == DIMS
        np.testing.assert_allclose(sizes, [1.25, 1.25, 2.0], atol=1e-5)


def test_reference_grid_missing_or_unreadable(tmp_path):
    with pytest.raises(InputError, match="nope.nii.gz"):
        reference_grid(tmp_path / "nope.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_text("not an image")
    with pytest.raises(InputError, match="bad.nii.gz"):
        reference_grid(bad)
    with pytest.raises(ConfigError):
        reference_grid(42)
    with pytest.raises(ConfigError, match="SimpleNamespace"):     # an object with an affine and a shape is not enough
        reference_grid(types.SimpleNamespace(affine=np.eye(4), shape=DIMS))


@pytest.mark.parametrize("ext", [".trk", ".trx"])
def test_reference_must_match_file(tmp_path, ext):
    path = save_tractogram(_tg_make("las"), tmp_path / f"m{ext}")
    assert len(load_tractogram(path, reference=_tg_nifti(tmp_path, "las"))) == 12
    with pytest.raises(InputError, match=f"m{ext}.*reference"):
        load_tractogram(path, reference=_tg_nifti(tmp_path, "ras"))
    with pytest.raises(InputError, match=f"m{ext}.*reference"):
        load_tractogram(path, reference=(_tg_affine("las"), (20, 22, 19)))


def test_tck_needs_reference(tmp_path):
    path = save_tractogram(_tg_make(), tmp_path / "n.tck")
    with pytest.raises(InputError, match="n.tck.*no grid: give a reference image"):
        load_tractogram(path)


# ---------------------------------------------------------------- outputs

@pytest.mark.parametrize("ext", FORMATS)
def test_existing_output_refused_and_untouched(tmp_path, ext):
    path = tmp_path / f"x{ext}"
    path.write_bytes(b"old")
    with pytest.raises(OutputExistsError, match=f"x{ext}"):
        save_tractogram(_tg_make(), path, sidecar={"command": "test"})
    assert path.read_bytes() == b"old"
    assert not sidecar_path(path).exists()
    assert _tg_leftovers(tmp_path) == []


def test_existing_sidecar_refused_before_writing(tmp_path):
    path = tmp_path / "tracks.trx"
    sidecar_path(path).write_text("{}")
    with pytest.raises(OutputExistsError, match="tracks.json"):
        save_tractogram(_tg_make(), path, sidecar={"command": "test"})
    assert not path.exists()
    assert sidecar_path(path).read_text() == "{}"


def test_force_overwrites_output_and_sidecar(tmp_path):
    path = tmp_path / "tracks.trk"
    save_tractogram(_tg_make(n=3), path, sidecar={"run": 1})
    save_tractogram(_tg_make(n=7), path, force=True, sidecar={"run": 2})
    assert len(load_tractogram(path)) == 7
    assert json.loads(sidecar_path(path).read_text())["run"] == 2


def test_sidecar_written_beside_output(tmp_path):
    path = tmp_path / "tracks.trx"
    save_tractogram(_tg_make(), path, sidecar={"command": "track", "seed": 3})
    side = tmp_path / "tracks.json"
    assert sidecar_path(path) == side
    assert json.loads(side.read_text()) == {"command": "track", "seed": 3}
    assert not (tmp_path / "tracks.trx.json").exists()


def test_unsupported_extension_on_save(tmp_path):
    with pytest.raises(ConfigError, match=r"t\.vtk.*\.trk.*\.tck.*\.trx"):
        save_tractogram(_tg_make(), tmp_path / "t.vtk")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ext", FORMATS)
def test_failed_write_leaves_nothing(tmp_path, monkeypatch, ext):
    def _tg_broken_writer(*args, **kwargs):
        target = next(a for a in args if isinstance(a, str))
        with open(target, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("disk on fire")

    if ext == ".trx":
        monkeypatch.setattr(tmm, "save", lambda trx, name, *a: _tg_broken_writer(name))
    else:
        cls = TrkFile if ext == ".trk" else TckFile
        monkeypatch.setattr(cls, "save", lambda self, name: _tg_broken_writer(name))
    with pytest.raises(RuntimeError, match="disk on fire"):
        save_tractogram(_tg_make(), tmp_path / f"f{ext}", sidecar={"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_trx_temporary_folders_are_removed(tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TRX_TMPDIR", str(scratch))
    opened = []  # keep every TrxFile alive, so only an explicit close() can clean up
    real_load = tmm.load
    monkeypatch.setattr(tmm, "load", lambda *a, **k: opened.append(real_load(*a, **k)) or opened[-1])
    tg = _tg_make(data_per_streamline={"fa": np.ones(12)})
    path = save_tractogram(tg, tmp_path / "t.trx")
    load_tractogram(path)
    deflated = tmp_path / "deflated.trx"  # a compressed .trx is unpacked to a temp folder
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    _tg_assert_same_points(load_tractogram(deflated).streamlines, tg.streamlines)
    assert len(opened) == 2
    assert os.listdir(scratch) == []


# ---------------------------------------------------------------- bad inputs

def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="absent.trk.*not found"):
        load_tractogram(tmp_path / "absent.trk")


def test_unsupported_extension_on_load(tmp_path):
    path = tmp_path / "t.vtk"
    path.write_text("x")
    with pytest.raises(InputError, match=r"t\.vtk.*unsupported"):
        load_tractogram(path)


def test_directory_is_refused(tmp_path):
    (tmp_path / "d.trx").mkdir()
    with pytest.raises(InputError, match="d.trx.*directory"):
        load_tractogram(tmp_path / "d.trx")


@pytest.mark.parametrize("ext", FORMATS)
def test_truncated_file(tmp_path, ext):
    path = save_tractogram(_tg_make(), tmp_path / f"cut{ext}")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=f"cut{ext}"):
        load_tractogram(path, reference=_tg_make())


@pytest.mark.parametrize("ext", [".trk", ".tck"])
def test_truncated_between_streamlines(tmp_path, ext):
    """A cut that falls exactly between two streamlines must not pass as a shorter file."""
    tg = _tg_make()
    path = save_tractogram(tg, tmp_path / f"cut{ext}")
    if ext == ".trk":  # header, then per streamline: int32 count + xyz (no scalars here)
        keep = 1000 + sum(4 + 12 * len(s) for s in tg.streamlines[:5])
    else:  # header, then per streamline: xyz rows + a NaN delimiter row
        start = TckFile.load(str(path), lazy_load=True).header["_offset_data"]
        keep = start + sum(12 + 12 * len(s) for s in tg.streamlines[:5])
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(InputError, match=f"cut{ext}.*(12 streamlines, found 5|end-of-file)"):
        load_tractogram(path, reference=tg)


@pytest.mark.parametrize("content", [b"", b"this is a text file, not a tractogram\n" * 40])
@pytest.mark.parametrize("ext", FORMATS)
def test_garbage_or_empty_file(tmp_path, ext, content):
    path = tmp_path / f"junk{ext}"
    path.write_bytes(content)
    with pytest.raises(InputError, match=f"junk{ext}.*(truncated or corrupt|invalid)"):
        load_tractogram(path, reference=_tg_make())


def test_trx_permission_error_is_explained(tmp_path, monkeypatch):
    path = save_tractogram(_tg_make(), tmp_path / "ro.trx")

    def _tg_denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tmm, "load", _tg_denied)
    with pytest.raises(InputError, match="ro.trx.*Permission denied.*read-write"):
        load_tractogram(path)


def test_tck_renamed_trk_is_refused(tmp_path):
    tck = save_tractogram(_tg_make(), tmp_path / "a.tck")
    renamed = tmp_path / "a.trk"
    renamed.write_bytes(tck.read_bytes())
    with pytest.raises(InputError, match="a.trk"):
        load_tractogram(renamed)


# ---------------------------------------------------------------- validation

def test_tractogram_validates_its_parts():
    tg = _tg_make()
    with pytest.raises(ConfigError, match="data_per_streamline"):
        Tractogram(tg.streamlines, tg.affine, DIMS, data_per_streamline={"fa": np.ones(3)})
    with pytest.raises(ConfigError, match="data_per_point"):
        Tractogram(tg.streamlines, tg.affine, DIMS, data_per_point={"t": [np.ones(2)] * 12})
    with pytest.raises(ConfigError, match="affine"):
        Tractogram(tg.streamlines, np.eye(3), DIMS)
    with pytest.raises(ConfigError, match=r"\(n, 3\)"):
        Tractogram(ArraySequence([np.ones((4, 2), np.float32)]), tg.affine, DIMS)
    converted = Tractogram([np.ones((4, 3), np.float64)], tg.affine, DIMS)
    assert converted.streamlines.get_data().dtype == np.float32
    assert converted.voxel_sizes == pytest.approx((1.25, 1.25, 2.0))
