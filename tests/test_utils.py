"""Shared helpers: atomic writes leave no temp file behind and give files the mode a plain write would."""

import os
import stat

import pytest

from lmforge import utils


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_writes_respect_the_umask(tmp_path, umask_022):
    utils.write_json(tmp_path / "a" / "summary.json", {"x": 1})
    path = tmp_path / "a" / "summary.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # mkstemp's 0600 would keep a shared report private
    assert os.listdir(tmp_path / "a") == ["summary.json"]  # the temp file was renamed, not left
    path.chmod(0o600)  # a file someone made private stays private when rewritten, as with open(path, "w")
    utils.write_json(path, {"x": 2})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and utils.read_json(path) == {"x": 2}


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    utils.atomic_write_text(path, "old")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        utils.atomic_write_text(path, "new")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]
