"""The adversarial suite: ``difftract run`` (the command users type) on malformed subjects.

Every refusal must be exit code 2, exactly one ``difftract: error:`` line on stderr that names
the offending file and the problem (notes and warnings may come before it, a traceback never),
and nothing written: no OUT, no hidden ``.OUT.*`` staging folder beside it, no parent folder
created for it. One small valid subject is written per module; each case copies it and breaks
one thing. The refusals happen before any fitting, so most cases cost milliseconds in-process
(the ``cli`` fixture runs the same ``main()`` as the console script).

Accepted oddities (non-unit bvecs, non-binary masks, a 1-voxel-thick volume) are checked with
``difftract check`` (the same loader); anisotropic voxels get one full ``run --method det``.
Ctrl-C, SIGTERM and SIGKILL mid-track are sent to a real ``python -m difftract run`` process.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from difftract.phantom import save_phantom
from difftract.weights import WEIGHTS_DIR

FILES = ("dwi.nii.gz", "dwi.bval", "dwi.bvec", "mask.nii.gz", "wm.nii.gz")


# ---------------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module")
def subject(tmp_path_factory, crossing_noisefree):
    """A small valid subject (24 x 24 x 8 at 2 mm, 2 b0 + 64 directions, whole-grid brain mask, wm mask)."""
    return save_phantom(crossing_noisefree, tmp_path_factory.mktemp("bad_inputs") / "subject")


@pytest.fixture(scope="module")
def arrays(subject):
    img = nib.load(subject / "dwi.nii.gz")
    return {"data": np.asarray(img.dataobj, dtype=np.float32), "affine": img.affine,
            "mask": np.asarray(nib.load(subject / "mask.nii.gz").dataobj),
            "wm": np.asarray(nib.load(subject / "wm.nii.gz").dataobj),
            "bvals": np.loadtxt(subject / "dwi.bval"), "bvecs": np.loadtxt(subject / "dwi.bvec")}


def copy_subject(subject: Path, where: Path) -> Path:
    where.mkdir(parents=True)
    for name in FILES:
        shutil.copy(subject / name, where / name)
    return where


def write_image(path: Path, data, affine) -> None:
    nib.save(nib.Nifti1Image(np.asarray(data), np.asarray(affine, float)), path)


def write_bvals(path: Path, bvals) -> None:
    path.write_text(" ".join(f"{b:g}" for b in bvals) + "\n")


def write_bvecs(path: Path, bvecs) -> None:
    path.write_text("\n".join(" ".join(f"{v:.6f}" for v in row) for row in np.atleast_2d(bvecs)) + "\n")


def leftovers(parent: Path, out: Path) -> list[str]:
    """Hidden staging entries of ``out`` in ``parent`` (``.OUT.partial-PID-XXXX`` and the like)."""
    if not parent.is_dir():
        return []
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{out.name}."))


def error_line(stderr: str) -> str:
    """The one ``difftract: error:`` line; every other line must be a note or a warning."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("difftract: error:")]
    assert len(errors) == 1, stderr
    others = [line for line in lines if line not in errors]
    assert all(line.startswith(("difftract: note:", "difftract: warning:")) for line in others), stderr
    assert lines[-1] == errors[0], stderr
    return errors[0]


def assert_refused(res, out: Path, names: str | tuple[str, ...], *keywords: str) -> str:
    """Exit 2, one error line naming a file of ``names`` and every keyword, and nothing at ``out``."""
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    line = error_line(res.stderr)
    names = (names,) if isinstance(names, str) else names
    assert any(name in line for name in names), line
    for word in keywords:
        assert word.lower() in line.lower(), (word, line)
    assert not out.exists(), f"{out} was written"
    assert leftovers(out.parent, out) == [], leftovers(out.parent, out)
    return line


# ---------------------------------------------------------------------- malformed subjects
def _first_dw(a):
    return int(np.argmax(a["bvals"] > 50))


def _dwi(d, a, data, affine=None):
    write_image(d / "dwi.nii.gz", data, a["affine"] if affine is None else affine)


def _with_nan(d, a):
    data = a["data"].copy()
    data[3, 4, 2, 5] = np.nan
    _dwi(d, a, data)


def _with_inf(d, a):
    data = a["data"].copy()
    data[10, 11, 3, :] = np.inf
    _dwi(d, a, data)


def _zero_bvec(d, a):
    bvecs = a["bvecs"].copy()
    bvecs[:, _first_dw(a)] = 0.0
    write_bvecs(d / "dwi.bvec", bvecs)


def _nan_bvec(d, a):
    bvecs = a["bvecs"].copy()
    bvecs[:, _first_dw(a)] = np.nan
    write_bvecs(d / "dwi.bvec", bvecs)


def _negative_bval(d, a):
    bvals = a["bvals"].copy()
    bvals[_first_dw(a)] = -1000
    write_bvals(d / "dwi.bval", bvals)


def _b0s_without_signal(d, a):
    data = a["data"].copy()
    data[..., a["bvals"] <= 50] = 0
    _dwi(d, a, data)


def _truncated_gz(d, a):
    raw = (d / "dwi.nii.gz").read_bytes()
    (d / "dwi.nii.gz").write_bytes(raw[: len(raw) // 2])


def _uncompressed_named_gz(d, a):
    img = nib.Nifti1Image(a["data"], a["affine"])
    (d / "dwi.nii.gz").write_bytes(img.to_bytes())


def _text_named_gz(d, a):
    (d / "dwi.nii.gz").write_text("dcm2niix failed\n")


def _gz_of_garbage(d, a):
    (d / "dwi.nii.gz").write_bytes(gzip.compress(b"not a NIfTI header"))


def _directory(name):
    def make(d, a):
        (d / name).unlink()
        (d / name).mkdir()
    return make


def _mask_shifted(d, a):
    affine = a["affine"].copy()
    affine[0, 3] += 2.0
    write_image(d / "mask.nii.gz", a["mask"], affine)


def _mask_4d(d, a):
    write_image(d / "mask.nii.gz", np.stack([a["mask"]] * 2, axis=-1), a["affine"])


# (id, break the copied subject, file named in the message, keywords of the problem)
MALFORMED = [
    ("bvec-count-mismatch", lambda d, a: write_bvecs(d / "dwi.bvec", a["bvecs"][:, :-1]),
     "dwi.bvec", ("directions", "volumes")),
    ("bval-count-mismatch", lambda d, a: write_bvals(d / "dwi.bval", a["bvals"][:-1]),
     "dwi.bval", ("values", "volumes")),
    ("bvec-2xN", lambda d, a: write_bvecs(d / "dwi.bvec", a["bvecs"][:2]), "dwi.bvec", ("3 rows", "2 x")),
    ("bvec-4xN", lambda d, a: write_bvecs(d / "dwi.bvec", np.vstack([a["bvecs"], a["bvecs"][:1]])),
     "dwi.bvec", ("3 rows", "4 x")),
    ("zero-bvec-on-dwi", _zero_bvec, "dwi.bvec", ("zero gradient direction",)),
    ("nan-bvec-on-dwi", _nan_bvec, "dwi.bvec", ("NaN", "diffusion-weighted")),
    ("no-b0", lambda d, a: write_bvals(d / "dwi.bval", np.where(a["bvals"] <= 50, 1000, a["bvals"])),
     "dwi.bval", ("no b0",)),
    ("bvals-in-s-per-m2", lambda d, a: write_bvals(d / "dwi.bval", a["bvals"] * 1e6), "dwi.bval", ("s/m^2",)),
    ("negative-bval", _negative_bval, "dwi.bval", ("negative",)),
    ("dwi-3d", lambda d, a: _dwi(d, a, a["data"][..., 0]), "dwi.nii.gz", ("4D", "3D")),
    ("dwi-5d", lambda d, a: _dwi(d, a, np.stack([a["data"]] * 2, axis=-1)), "dwi.nii.gz", ("4D", "5D")),
    ("dwi-nan-voxels", _with_nan, "dwi.nii.gz", ("NaN/Inf", "--zero-nonfinite")),
    ("dwi-inf-voxels", _with_inf, "dwi.nii.gz", ("NaN/Inf", "--zero-nonfinite")),
    ("dwi-all-zero", lambda d, a: _dwi(d, a, np.zeros_like(a["data"])), "dwi.nii.gz", ("all zeros",)),
    ("b0s-without-signal", _b0s_without_signal, "dwi.nii.gz", ("b0", "no signal")),
    ("mask-empty", lambda d, a: write_image(d / "mask.nii.gz", np.zeros_like(a["mask"]), a["affine"]),
     "mask.nii.gz", ("empty",)),
    ("mask-other-grid", lambda d, a: write_image(d / "mask.nii.gz", np.ones((12, 12, 4), np.uint8), a["affine"]),
     "mask.nii.gz", ("shape", "grid")),
    ("mask-other-affine", _mask_shifted, "mask.nii.gz", ("affine differs",)),
    ("mask-4d", _mask_4d, "mask.nii.gz", ("3D",)),
    ("dwi-truncated-gz", _truncated_gz, "dwi.nii.gz", ("truncated",)),
    ("dwi-uncompressed-named-gz", _uncompressed_named_gz, "dwi.nii.gz", ("named .gz", "uncompressed", "rename")),
    ("dwi-text-named-gz", _text_named_gz, "dwi.nii.gz", ("not gzip", "not NIfTI")),
    ("dwi-gzip-of-garbage", _gz_of_garbage, "dwi.nii.gz", ("truncated or not NIfTI",)),
    ("dwi-empty-file", lambda d, a: (d / "dwi.nii.gz").write_bytes(b""), "dwi.nii.gz", ("empty",)),
    ("dwi-is-a-directory", _directory("dwi.nii.gz"), "dwi.nii.gz", ("directory",)),
    ("mask-is-a-directory", _directory("mask.nii.gz"), "mask.nii.gz", ("directory",)),
    ("bval-is-a-directory", _directory("dwi.bval"), "dwi.bval", ("directory",)),
    ("bvec-missing", lambda d, a: (d / "dwi.bvec").unlink(), "dwi.bvec", ("not found",)),
]


@pytest.mark.parametrize("name, spoil, culprit, keywords", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_subject_is_refused_and_nothing_written(cli, subject, arrays, tmp_path, name, spoil, culprit,
                                                          keywords):
    bad = copy_subject(subject, tmp_path / "sub")
    spoil(bad, arrays)
    results = tmp_path / "results"
    results.mkdir()
    out = results / "out"
    assert_refused(cli("run", bad, "--out", out, "--method", "det"), out, culprit, *keywords)
    assert list(results.iterdir()) == []


def test_refused_run_leaves_no_parent_folders_it_created(cli, subject, arrays, tmp_path):
    """``run`` creates missing parents of OUT; when the subject is refused it must not leave them."""
    bad = copy_subject(subject, tmp_path / "sub")
    write_bvals(bad / "dwi.bval", arrays["bvals"][:-1])
    out = tmp_path / "new" / "deeper" / "out"
    assert_refused(cli("run", bad, "--out", out, "--method", "det"), out, "dwi.bval", "volumes")
    assert not (tmp_path / "new").exists()


def test_missing_brain_mask_is_refused(cli, subject, tmp_path):
    bad = copy_subject(subject, tmp_path / "sub")
    (bad / "mask.nii.gz").unlink()
    out = tmp_path / "out"
    assert_refused(cli("run", bad, "--out", out, "--method", "det"), out, "sub", "no brain mask")


# ---------------------------------------------------------------------- weights
def test_weights_of_another_model_are_refused_before_any_fit(cli, subject, tmp_path):
    out = tmp_path / "out"
    res = cli("run", subject, "--out", out, "--method", "ddtracking", "--weights", WEIGHTS_DIR / "qcgdti.pt")
    assert_refused(res, out, "qcgdti.pt", "not DDTracking weights")
    assert "$ difftract fit" not in res.stdout        # refused before the DTI and SH fits


def test_weights_failing_their_checksum_are_refused(cli, subject, tmp_path):
    weights = tmp_path / "mine.pt"
    shutil.copy(WEIGHTS_DIR / "ddtracking.pt", weights)
    weights.with_suffix(".json").write_text(json.dumps({"weights_sha256": "0" * 64}))
    out = tmp_path / "out"
    res = cli("run", subject, "--out", out, "--method", "ddtracking", "--weights", weights)
    assert_refused(res, out, "mine.pt", "checksum mismatch")
    assert "$ difftract fit" not in res.stdout


def test_weights_that_are_not_a_checkpoint_are_refused(cli, subject, tmp_path):
    weights = tmp_path / "notes.pt"
    weights.write_text("not weights")
    out = tmp_path / "out"
    res = cli("run", subject, "--out", out, "--method", "ddtracking", "--weights", weights)
    assert_refused(res, out, "notes.pt", "cannot read weights")
    assert "weights_only=False" not in res.stderr and "arbitrary code" not in res.stderr
    assert "$ difftract fit" not in res.stdout


# ---------------------------------------------------------------------- stop masks
def test_stop_mask_that_excludes_every_seed_is_refused(cli, subject, arrays, tmp_path):
    """run seeds in its stop mask and fits inside the brain mask: a stop mask wholly outside the brain
    mask leaves no seed where anything was fitted. Refused before the fits, naming the stop mask."""
    sub = copy_subject(subject, tmp_path / "sub")
    brain = np.zeros_like(arrays["mask"])
    brain[:12] = 1
    write_image(sub / "mask.nii.gz", brain, arrays["affine"])
    stop = tmp_path / "stop.nii.gz"
    write_image(stop, 1 - brain, arrays["affine"])
    out = tmp_path / "out"
    res = cli("run", sub, "--out", out, "--method", "det", "--stop-mask", stop)
    assert_refused(res, out, "stop.nii.gz", "no voxel inside the brain mask", "seed")
    assert "$ difftract fit" not in res.stdout


@pytest.mark.parametrize("kind", ["empty", "other-grid"])
def test_stop_mask_empty_or_on_another_grid_is_refused_before_any_fit(cli, subject, arrays, tmp_path, kind):
    stop = tmp_path / "stop.nii.gz"
    if kind == "empty":
        write_image(stop, np.zeros_like(arrays["wm"]), arrays["affine"])
    else:
        write_image(stop, np.ones((12, 12, 4), np.uint8), arrays["affine"])
    out = tmp_path / "out"
    res = cli("run", subject, "--out", out, "--method", "det", "--stop-mask", stop)
    assert_refused(res, out, "stop.nii.gz", *(("stop mask is empty", "white matter") if kind == "empty" else ("grid",)))
    assert "$ difftract fit" not in res.stdout


def test_stop_mask_from_which_no_streamline_grows_is_refused(cli, subject, arrays, tmp_path):
    """One white-matter voxel: every seed stops long before --min-len. Not an empty tractogram with exit 0."""
    stop = tmp_path / "stop.nii.gz"
    one = np.zeros_like(arrays["wm"])
    one[12, 12, 4] = 1
    write_image(stop, one, arrays["affine"])
    out = tmp_path / "out"
    assert_refused(cli("-q", "run", subject, "--out", out, "--method", "det", "--stop-mask", stop), out,
                   "stop.nii.gz", "no streamline", "seeds")


# ---------------------------------------------------------------------- outputs
def test_existing_output_without_force_is_refused_and_kept(cli, subject, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    res = cli("run", subject, "--out", out, "--method", "det")
    assert res.returncode == 2
    line = error_line(res.stderr)
    assert str(out) in line and "output exists" in line and "--force" in line
    assert [p.name for p in out.iterdir()] == ["precious.txt"] and leftovers(tmp_path, out) == []


def _read_only_target(tmp_path: Path) -> tuple[Path, Path]:
    """An output under a folder this process cannot write in; ``(out, folder)``.

    root ignores chmod 555, so as root use sysfs, which refuses everyone.
    """
    if os.geteuid() == 0:
        return Path("/sys/difftract_out"), Path("/sys")
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    return folder / "out", folder


def test_output_under_a_read_only_folder_is_refused(cli, subject, tmp_path):
    out, folder = _read_only_target(tmp_path)
    if not folder.is_dir():
        pytest.skip(f"{folder} not available")
    try:
        res = cli("run", subject, "--out", out, "--method", "det")
        line = assert_refused(res, out, str(folder), "not writable")
        assert str(out) in line
    finally:
        if folder != Path("/sys"):
            folder.chmod(0o755)


# ---------------------------------------------------------------------- accepted, with a note
def _stderr_lines(res):
    assert "Traceback" not in res.stderr and "difftract: error" not in res.stderr, res.stderr
    return res.stderr


def test_non_unit_bvecs_are_accepted_with_a_warning(cli, subject, arrays, tmp_path):
    sub = copy_subject(subject, tmp_path / "sub")
    write_bvecs(sub / "dwi.bvec", arrays["bvecs"] * 1.1)
    res = cli("check", sub / "dwi.nii.gz", sub / "dwi.bval", sub / "dwi.bvec", "--mask", sub / "mask.nii.gz")
    assert res.returncode == 0, res.stderr
    assert "difftract: warning:" in _stderr_lines(res) and "normalised" in res.stderr and "dwi.bvec" in res.stderr


@pytest.mark.parametrize("kind", ["labels", "probability"])
def test_non_binary_masks_are_accepted_with_a_note(cli, subject, arrays, tmp_path, kind):
    sub = copy_subject(subject, tmp_path / "sub")
    mask = arrays["mask"].astype(np.float32)
    if kind == "labels":
        mask[:12] *= 2                       # labels 1 and 2
    else:
        mask[:12] *= 0.3                     # a probability map
    write_image(sub / "mask.nii.gz", mask, arrays["affine"])
    res = cli("check", sub / "dwi.nii.gz", sub / "dwi.bval", sub / "dwi.bvec", "--mask", sub / "mask.nii.gz")
    assert res.returncode == 0, res.stderr
    err = _stderr_lines(res)
    assert "mask.nii.gz: mask is not binary" in err
    assert ("difftract: note:" in err and "labels" in err) if kind == "labels" else \
        ("difftract: warning:" in err and "probability map" in err)


def test_nonfinite_voxels_are_accepted_when_zeroing_is_asked_for(cli, subject, arrays, tmp_path):
    sub = copy_subject(subject, tmp_path / "sub")
    _with_nan(sub, arrays)
    res = cli("check", sub / "dwi.nii.gz", sub / "dwi.bval", sub / "dwi.bvec", "--zero-nonfinite")
    assert res.returncode == 0, res.stderr
    assert "difftract: warning:" in _stderr_lines(res) and "NaN/Inf value(s) to 0" in res.stderr


def test_one_voxel_thick_volume_is_accepted_with_a_note(cli, subject, arrays, tmp_path):
    sub = copy_subject(subject, tmp_path / "sub")
    _dwi(sub, arrays, arrays["data"][:, :, 4:5])
    write_image(sub / "mask.nii.gz", arrays["mask"][:, :, 4:5], arrays["affine"])
    res = cli("check", sub / "dwi.nii.gz", sub / "dwi.bval", sub / "dwi.bvec", "--mask", sub / "mask.nii.gz")
    assert res.returncode == 0, res.stderr
    assert "difftract: note:" in _stderr_lines(res) and "one voxel thick along z" in res.stderr


def test_anisotropic_voxels_run_end_to_end_with_a_note(cli, subject, arrays, tmp_path):
    sub = copy_subject(subject, tmp_path / "sub")
    affine = arrays["affine"].copy()
    affine[:3, 2] *= 1.5                     # 2 x 2 x 3 mm
    for name in ("dwi.nii.gz", "mask.nii.gz", "wm.nii.gz"):
        img = nib.load(sub / name)
        write_image(sub / name, np.asarray(img.dataobj), affine)
    out = tmp_path / "out"
    res = cli("run", sub, "--out", out, "--method", "det", "--seeds-per-voxel", "1")
    assert res.returncode == 0, res.stderr[-3000:]
    err = _stderr_lines(res)
    assert "difftract: note:" in err and "anisotropic voxels 2 x 2 x 3 mm" in err
    assert json.loads((out / "tracks.json").read_text())["n_streamlines"] > 0
    assert (out / "report.html").is_file() and leftovers(tmp_path, out) == []


# ---------------------------------------------------------------------- signals mid-track
def _start_run(subject: Path, out: Path) -> subprocess.Popen:
    """``python -m difftract run`` with enough seeds that tracking lasts several seconds."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    # A shell's background job (`make test &`) ignores SIGINT, and a child inherits that, so
    # Python would install no KeyboardInterrupt handler: give the run the default disposition.
    return subprocess.Popen([sys.executable, "-m", "difftract", "-q", "run", str(subject), "--out", str(out),
                             "--method", "det", "--seeds-per-voxel", "100"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_tracking(proc: subprocess.Popen, out: Path, timeout: float = 120.0) -> Path:
    """Poll until the tractogram's spool exists inside run's staging folder; return the staging folder."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"run ended ({proc.returncode}) before tracking: {proc.stderr.read()[-2000:]}"
        for staging in out.parent.glob(f".{out.name}.partial-*"):
            if list(staging.glob(f"{out.name}/.tracks.trx.spool-*")):
                return staging
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    pytest.fail("tracking did not start in time")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_interrupt_mid_track_leaves_nothing(subject, tmp_path, sig, code):
    out = tmp_path / "out"
    proc = _start_run(subject, out)
    try:
        _wait_for_tracking(proc, out)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr and "partial outputs removed" in stderr, stderr[-3000:]
    assert not out.exists() and leftovers(tmp_path, out) == []


def test_sigkill_mid_track_leaves_staging_that_the_next_run_removes(cli, subject, tmp_path):
    out = tmp_path / "out"
    proc = _start_run(subject, out)
    try:
        staging = _wait_for_tracking(proc, out)
        proc.kill()
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and leftovers(tmp_path, out) == [staging.name]     # a killed run cannot clean up

    res = cli("run", subject, "--out", out, "--method", "det", "--seeds-per-voxel", "1")
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"removed {staging}, left behind by a run that was killed (pid {proc.pid})" in res.stderr
    assert not staging.exists() and leftovers(tmp_path, out) == []
    record = (out / "tracks.json").read_text()
    assert json.loads(record)["n_streamlines"] > 0
    for fragment in (".partial-", ".tmp-", ".spool-"):
        assert fragment not in record, fragment
