"""Staging folders: owner records, removal of what killed runs left, and output checks before work."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from difftract.errors import ConfigError, InputError, OutputExistsError
from difftract.io.atomic import (OWNER, atomic_directory, atomic_file, check_output, check_outputs, remove_stale,
                                 staging_dir)
from difftract.io.sidecar import final_paths, provenance, write_sidecar


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _fake_staging(parent: Path, name: str, kind: str, pid: int, host: str | None = None,
                  start: int | None = None, record: bool = True, suffix: str = "abc123") -> Path:
    folder = parent / f".{name}.{kind}-{pid}-{suffix}"
    folder.mkdir()
    (folder / "partial.bin").write_bytes(b"x" * 10)
    if record:
        (folder / OWNER).write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid, "start": start}))
    return folder


def test_staging_folder_names_its_owner(tmp_path):
    folder = staging_dir(tmp_path / "sub" / "out.trx", "spool")
    assert folder.parent == tmp_path / "sub"                     # parents are created
    assert folder.name.startswith(f".out.trx.spool-{os.getpid()}-")
    owner = json.loads((folder / OWNER).read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()


def test_only_staging_of_dead_local_runs_is_removed(tmp_path, caplog):
    dead = _dead_pid()
    stale = _fake_staging(tmp_path, "out", "partial", dead)
    stale_spool = _fake_staging(tmp_path, "out", "spool", dead, record=False)     # killed before its record
    legacy = tmp_path / f".out.partial-{dead}"                                    # difftract 0.1's name
    legacy.mkdir()
    alive = _fake_staging(tmp_path, "out", "tmp", os.getpid(), start=None)
    elsewhere = _fake_staging(tmp_path, "out", "partial", dead, host="another-node", suffix="def456")
    other_output = _fake_staging(tmp_path, "other", "partial", dead)
    with caplog.at_level("INFO", logger="difftract"):
        removed = remove_stale(tmp_path / "out")
    assert sorted(removed) == sorted([stale, stale_spool, legacy])
    assert not stale.exists() and not stale_spool.exists() and not legacy.exists()
    assert alive.exists() and elsewhere.exists() and other_output.exists()
    assert "left behind by a run that was killed" in caplog.text and str(dead) in caplog.text


def test_a_reused_pid_is_not_its_old_owner(tmp_path):
    """Our own PID with another start time: the process that made the folder is gone."""
    folder = _fake_staging(tmp_path, "out", "partial", os.getpid(), start=1)
    if not Path(f"/proc/{os.getpid()}/stat").exists():
        pytest.skip("no /proc: start times cannot be read")
    assert remove_stale(tmp_path / "out") == [folder]


def test_check_output_removes_stale_staging(tmp_path):
    stale = _fake_staging(tmp_path, "tracks.trx", "spool", _dead_pid())
    check_output(tmp_path / "tracks.trx")
    assert not stale.exists()


def test_output_checks_happen_before_work(tmp_path):
    existing = tmp_path / "out.trx"
    existing.write_text("x")
    with pytest.raises(OutputExistsError, match="--force"):
        check_output(existing)
    check_output(existing, force=True)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        check_output(a_file / "sub" / "out.trx")
    with pytest.raises(ConfigError, match="would overwrite the input"):
        check_output(existing, force=True, inputs=[tmp_path / "." / "out.trx"])
    with pytest.raises(ConfigError, match="holds the input"):     # --out-dir the subject's own folder
        check_output(tmp_path, force=True, inputs=[existing])
    with pytest.raises(ConfigError, match="two outputs"):
        check_outputs([tmp_path / "a.trx", tmp_path / "x" / ".." / "a.trx"])
    assert check_output(tmp_path / "new" / "deeper" / "out.trx") == tmp_path / "new" / "deeper" / "out.trx"
    assert not (tmp_path / "new").exists()           # checking creates nothing


def test_unwritable_folder_is_refused_before_work(tmp_path):
    if os.geteuid() == 0:    # root writes through permission bits; sysfs refuses even root
        target = Path("/sys/difftract_out.trx")
        if not Path("/sys").is_dir():
            pytest.skip("no /sys to stand for a read-only folder")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        target = ro / "out.trx"
    with pytest.raises(InputError, match="not writable"):
        check_output(target)


def test_atomic_writers_leave_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "a.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(tmp_path / "d", kind="partial") as tmp:
            (tmp / "f").write_text("half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_replaces_with_force(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "old").write_text("1")
    with atomic_directory(out, force=True) as tmp:
        (tmp / "new").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_sidecars_name_final_paths_not_staging(tmp_path):
    out = tmp_path / "run"
    with atomic_directory(out, kind="partial") as staging, final_paths(staging, out):
        (staging / "fod.nii.gz").write_bytes(b"0")
        record = provenance("track", {"fod": staging / "fod.nii.gz", "note": f"mask {staging}/wm.nii.gz"},
                            inputs=[staging / "fod.nii.gz"])
        write_sidecar(staging / "tracks.trx", record)
    text = (out / "tracks.json").read_text()
    assert ".partial-" not in text and str(out / "fod.nii.gz") in text and f"mask {out}/wm.nii.gz" in text
