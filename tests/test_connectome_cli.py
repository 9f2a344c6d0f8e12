"""``difftract connectome``: tck2connectome's assignment rules on hand-made cases, the CLI, and MRtrix itself."""

from __future__ import annotations

import json
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest

from difftract.errors import InputError
from difftract.eval.connectome import (Parcellation, assign_end_voxels, assign_radial, build_connectome,
                                       check_labels, radial_offsets, read_lut, read_matrix)
from difftract.io.tractogram import Tractogram, save_tractogram

# 2 mm voxels, voxel (0, 0, 0) centred at (-10, -20, 5) mm: mm = 2 * index + origin
AFFINE = np.array([[2.0, 0, 0, -10], [0, 2, 0, -20], [0, 0, 2, 5], [0, 0, 0, 1]])
ORIGIN = AFFINE[:3, 3]


def mm(*index) -> np.ndarray:
    """RAS mm of a (continuous) voxel index."""
    return 2.0 * np.asarray(index, dtype=np.float64) + ORIGIN


def parcellation(shape=(10, 6, 4)) -> Parcellation:
    labels = np.zeros(shape, np.int64)
    labels[0, 0, 0] = 1
    labels[1, 0, 0] = 2
    labels[5, 3, 2] = 3
    labels[9, 5, 3] = 5          # label 4 has no voxel: an empty node
    return Parcellation(labels, AFFINE.copy())


# ---------------------------------------------------------------------------- end voxels
def test_end_voxel_rounds_halves_away_from_zero_and_is_zero_off_the_grid():
    p = parcellation()
    points = np.array([mm(0, 0, 0), mm(0.49, 0.3, -0.2), mm(0.5, 0, 0),   # 1, 1, boundary -> voxel 1 (label 2)
                       mm(1.5, 0, 0),                                     # boundary -> voxel 2: unlabelled
                       mm(-0.5, 0, 0), mm(-0.49, 0, 0),                   # -0.5 rounds to -1: off; -0.49: voxel 0
                       mm(9.0, 5, 3), mm(9.5, 5, 3), mm(30, 1, 1)])       # last voxel, just past it, far off
    np.testing.assert_array_equal(assign_end_voxels(points, p), [1, 1, 2, 0, 0, 1, 5, 0, 0])


# ---------------------------------------------------------------------------- radial search
def test_radial_search_finds_the_nearest_label_within_the_radius_and_not_beyond():
    p = parcellation()
    # unlabelled end 3.9 mm from voxel (5, 3, 2) along x: found with 4 mm, not with 3.8 mm
    end = mm(5, 3, 2) + [3.9, 0, 0]
    assert assign_radial(end[None], p, 4.0)[0] == 3
    assert assign_radial(end[None], p, 3.8)[0] == 0
    # exactly at the radius: not found (strictly closer, as MRtrix)
    assert assign_radial((mm(5, 3, 2) + [4.0, 0, 0])[None], p, 4.0)[0] == 0
    # inside a labelled voxel: that voxel; between labels 1 and 2 but nearer 2
    assert assign_radial(mm(5.2, 3, 2)[None], p)[0] == 3
    assert assign_radial(mm(0.6, 0, 0)[None], p)[0] == 2
    # off the grid, 3 mm from the corner voxel (0, 0, 0): found
    assert assign_radial(mm(-1.5, 0, 0)[None], p)[0] == 1
    assert assign_end_voxels(mm(-1.5, 0, 0)[None], p)[0] == 0


def test_radial_ties_go_to_the_first_voxel_of_mrtrix_search_order():
    p = parcellation()
    # exactly halfway between voxels 0 (label 1) and 1 (label 2): the end's voxel, std::round(0.5) = 1,
    # is searched first (offset 0)
    assert assign_radial(mm(0.5, 0, 0)[None], p)[0] == 2
    # halfway between two labelled voxels around an unlabelled one: offsets run x from negative to
    # positive, so the voxel at -x wins whichever its label
    for left, right in ((7, 8), (8, 7)):
        labels = np.zeros((6, 3, 3), np.int64)
        labels[2, 1, 1], labels[4, 1, 1] = left, right
        assert assign_radial(mm(3, 1, 1)[None], Parcellation(labels, AFFINE.copy()))[0] == left
        assert assign_radial(mm(3.01, 1, 1)[None], Parcellation(labels, AFFINE.copy()))[0] == right
    offsets = radial_offsets((2.0, 2.0, 2.0), 4.0)
    assert offsets[0].tolist() == [0, 0, 0]
    assert offsets[1:7].tolist() == [[0, 0, -1], [0, -1, 0], [-1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert np.all(np.linalg.norm(offsets * 2.0, axis=1) < 4.0 + np.sqrt(3))


# ---------------------------------------------------------------------------- matrix and scales
def streamlines():
    return [np.array([mm(0, 0, 0), mm(3, 0, 0), mm(5, 3, 2)]),            # 1 - 3, length 6 + sqrt(16+36+16)
            np.array([mm(5, 3, 2), mm(1, 0, 0)]),                         # 3 - 2
            np.array([mm(0, 0, 0), mm(0, 1, 0), mm(0, 0, 0)]),            # 1 - 1, length 4
            np.array([mm(0, 0, 0), mm(4, 5, 0)]),                         # 1 - unassigned
            np.array([mm(9, 5, 3)])]                                      # 5 - 5, one point, length 0


def test_symmetric_counts_self_connections_once_and_drops_unassigned():
    c = build_connectome(streamlines(), parcellation(), "end")
    assert c.node_labels == [1, 2, 3, 4, 5] and c.node_names == ["1", "2", "3", "4", "5"]
    expected = np.zeros((5, 5))
    expected[0, 2] = expected[2, 0] = 1
    expected[1, 2] = expected[2, 1] = 1
    expected[0, 0] = 1
    expected[4, 4] = 1
    np.testing.assert_array_equal(c.matrix, expected)
    np.testing.assert_array_equal(c.assignments, [[1, 3], [3, 2], [1, 1], [1, 0], [5, 5]])
    kept = build_connectome(streamlines(), parcellation(), "end", keep_unassigned=True, zero_diagonal=True)
    assert kept.node_labels[0] == 0 and kept.matrix[0, 1] == kept.matrix[1, 0] == 1
    assert np.all(np.diag(kept.matrix) == 0)


def test_length_and_invlength_scales():
    first = 6 + np.sqrt(16 + 36 + 16)
    length = build_connectome(streamlines(), parcellation(), "end", scale="length").matrix
    assert length[0, 2] == pytest.approx(first) and length[2, 0] == pytest.approx(first)
    assert length[1, 2] == pytest.approx(np.sqrt(64 + 36 + 16))
    assert length[0, 0] == pytest.approx(4.0) and length[4, 4] == 0
    inv = build_connectome(streamlines(), parcellation(), "end", scale="invlength").matrix
    assert inv[0, 2] == pytest.approx(1 / first) and inv[0, 0] == pytest.approx(0.25)
    assert inv[4, 4] == 0                                  # one point: contributes 0, as MRtrix


# ---------------------------------------------------------------------------- labels and LUT
def test_labels_must_be_non_negative_integers():
    assert check_labels(np.array([[[0.0, 2.0]]], np.float32)).dtype == np.int64
    with pytest.raises(InputError, match="fractional"):
        check_labels(np.array([[[0.0, 1.5]]]))
    with pytest.raises(InputError, match=">= 0"):
        check_labels(np.array([[[0, -1]]]))
    with pytest.raises(InputError, match="no labels"):
        check_labels(np.zeros((2, 2, 2)))
    with pytest.raises(InputError, match="3D"):
        check_labels(np.zeros((2, 2)))


def test_lookup_table_formats(tmp_path):
    lut = tmp_path / "lut.txt"
    lut.write_text("# FreeSurfer style\n0 Unknown 0 0 0 0\n1 Left-Thalamus 0 118 14 0\n\n3 ctx-lh-x  1 2 3 0\n")
    assert read_lut(lut) == {0: "Unknown", 1: "Left-Thalamus", 3: "ctx-lh-x"}
    lut.write_text("one two\n")
    with pytest.raises(InputError, match="line 1"):
        read_lut(lut)


# ---------------------------------------------------------------------------- CLI
@pytest.fixture
def files(tmp_path):
    p = parcellation()
    nib.save(nib.Nifti1Image(p.labels.astype(np.int16), AFFINE), tmp_path / "parc.nii.gz")
    tracto = Tractogram.from_rasmm([s.astype(np.float32) for s in streamlines()], (AFFINE, p.labels.shape))
    save_tractogram(tracto, tmp_path / "t.tck")
    save_tractogram(tracto, tmp_path / "t.trx")
    (tmp_path / "lut.txt").write_text("1 a\n2 b\n3 c\n5 e\n")
    return tmp_path


def test_cli_writes_csv_sidecar_json_and_assignments(cli, files):
    d = files
    run = cli("connectome", d / "t.trx", "--labels", d / "parc.nii.gz", "--lut", d / "lut.txt", "--out",
              d / "conn.csv", "--assignment", "end", "--json", d / "full.json", "--assignments", d / "pairs.txt")
    assert run.returncode == 0, run.stderr
    assert "5 streamlines, 4 with both ends assigned" in run.stdout
    lines = (d / "conn.csv").read_text().splitlines()
    assert lines[0] == "a,b,c,4,e" and lines[1] == "1,0,1,0,0"
    matrix = read_matrix(d / "conn.csv")
    assert matrix.shape == (5, 5) and np.array_equal(matrix, matrix.T)
    sidecar = json.loads((d / "conn.csv.json").read_text())
    assert sidecar["command"] == "connectome" and sidecar["params"]["assignment"] == "end"
    assert "-assignment_end_voxels" in sidecar["equivalent"]
    full = json.loads((d / "full.json").read_text())
    assert full["node_labels"] == [1, 2, 3, 4, 5] and full["summary"]["assigned"] == 4
    assert (d / "pairs.txt").read_text().splitlines() == ["1 3", "3 2", "1 1", "1 0", "5 5"]
    again = cli("connectome", d / "t.tck", "--labels", d / "parc.nii.gz", "--out", d / "conn.csv")
    assert again.returncode == 2 and "exists" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    forced = cli("connectome", d / "t.tck", "--labels", d / "parc.nii.gz", "--out", d / "conn.csv", "--force",
                 "--scale", "invlength")
    assert forced.returncode == 0, forced.stderr
    assert read_matrix(d / "conn.csv")[0, 0] == pytest.approx(0.25)


def test_cli_refuses_another_grid_non_integer_labels_and_bad_options(cli, files):
    d = files
    nib.save(nib.Nifti1Image(parcellation().labels.astype(np.int16), np.diag([1.0, 1, 1, 1])), d / "other.nii.gz")
    other = cli("connectome", d / "t.trx", "--labels", d / "other.nii.gz", "--out", d / "c.csv")
    assert other.returncode == 2 and "grid" in other.stderr and len(other.stderr.strip().splitlines()) == 1
    assert not (d / "c.csv").exists()
    anyway = cli("connectome", d / "t.trx", "--labels", d / "other.nii.gz", "--out", d / "c.csv", "--any-grid")
    assert anyway.returncode == 0, anyway.stderr
    labels = parcellation().labels.astype(np.float32)
    labels[2, 2, 2] = 0.5
    nib.save(nib.Nifti1Image(labels, AFFINE), d / "soft.nii.gz")
    soft = cli("connectome", d / "t.tck", "--labels", d / "soft.nii.gz", "--out", d / "s.csv")
    assert soft.returncode == 2 and "integers" in soft.stderr and len(soft.stderr.strip().splitlines()) == 1
    assert not (d / "s.csv").exists()
    radius = cli("connectome", d / "t.tck", "--labels", d / "parc.nii.gz", "--out", d / "r.csv",
                 "--assignment", "end", "--radius", "3")
    assert radius.returncode == 2 and "--radius" in radius.stderr
    missing = cli("connectome", d / "none.tck", "--labels", d / "parc.nii.gz", "--out", d / "m.csv")
    assert missing.returncode == 2 and "not found" in missing.stderr


# ---------------------------------------------------------------------------- MRtrix itself
MRTRIX = shutil.which("tck2connectome")


@pytest.mark.skipif(MRTRIX is None, reason="tck2connectome (MRtrix3) not installed; the comparison on fibercup "
                                           "is benchmarks/bench_connectome.py")
@pytest.mark.parametrize("assignment, mr_opts", [("radial", []), ("end", ["-assignment_end_voxels"])])
def test_same_matrix_and_assignments_as_tck2connectome(cli, files, assignment, mr_opts):
    d = files
    rng = np.random.default_rng(1)
    shape = np.array(parcellation().labels.shape)
    ends = [np.r_[rng.integers(0, shape) + rng.choice([-0.5, 0, 0.5], 3)] for _ in range(400)]   # ties on purpose
    tracks = [np.array([mm(*ends[2 * i]), mm(*((ends[2 * i] + ends[2 * i + 1]) / 2 + 0.3)), mm(*ends[2 * i + 1])],
                       np.float32) for i in range(200)]
    nib.streamlines.TckFile(nib.streamlines.Tractogram(tracks, affine_to_rasmm=np.eye(4))).save(str(d / "r.tck"))
    for scale, mr_scale in (("count", []), ("length", ["-scale_length"])):
        subprocess.run([MRTRIX, "-quiet", "-force", str(d / "r.tck"), str(d / "parc.nii.gz"), str(d / "mr.csv"),
                        "-symmetric", "-keep_unassigned", *mr_opts, *mr_scale, "-out_assignments",
                        str(d / "mr.txt")], check=True)
        run = cli("connectome", d / "r.tck", "--labels", d / "parc.nii.gz", "--out", d / "dt.csv", "--force",
                  "--assignment", assignment, "--scale", scale, "--keep-unassigned", "--assignments", d / "dt.txt")
        assert run.returncode == 0, run.stderr
        ours = np.loadtxt(d / "dt.txt", dtype=int)
        theirs = np.loadtxt(d / "mr.txt", dtype=int, comments="#")
        np.testing.assert_array_equal(ours, theirs)
        np.testing.assert_allclose(read_matrix(d / "dt.csv"), read_matrix(d / "mr.csv"), rtol=1e-6, atol=0)
