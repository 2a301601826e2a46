"""Atomic writes: a crash or power loss leaves the old file or the whole new one."""

import os
from pathlib import Path

import pytest

from agileir import fileio


def test_file_is_synced_before_the_rename_and_its_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        events.append(("fsync", "dir" if target.is_dir() else target.name))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(dst).name))
        real_replace(src, dst)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the synced descriptors")
    monkeypatch.setattr(fileio.os, "fsync", fsync)
    monkeypatch.setattr(fileio.os, "replace", replace)
    fileio.atomic_write_text(tmp_path / "latest.json", "{}")
    kinds = [e[0] if e[0] == "replace" else e[1] for e in events]
    assert kinds[-1] == "dir", events  # the folder entry is flushed after the rename
    assert kinds.index("replace") < len(kinds) - 1
    first_file_sync = next(i for i, e in enumerate(events) if e[0] == "fsync" and e[1] != "dir")
    assert first_file_sync < kinds.index("replace"), events  # the data before the rename
    assert (tmp_path / "latest.json").read_text() == "{}"


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with fileio.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
