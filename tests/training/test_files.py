"""How trained weights name their subjects: relative to the working folder, never absolute."""

from __future__ import annotations

import os

from difftract.training.files import subject_label


def test_subject_label(tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "train" / "random_1001").mkdir(parents=True)
    (tmp_path / "elsewhere" / "s1").mkdir(parents=True)
    monkeypatch.chdir(work)
    assert subject_label("train/random_1001") == "train/random_1001"
    assert subject_label("./train/random_1001/") == "train/random_1001"
    assert subject_label(work / "train" / "random_1001") == "train/random_1001"   # absolute, inside: relative
    assert subject_label(tmp_path / "elsewhere" / "s1") == "s1"                    # outside: the name only
    assert subject_label("../elsewhere/s1") == "s1"
    assert subject_label(".") == "work"
    os.symlink(tmp_path / "elsewhere", work / "link")
    assert subject_label("link/s1") == "link/s1"                                   # a symlink is not followed
