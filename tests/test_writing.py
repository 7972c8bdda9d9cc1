"""writing.py: the writer's lock, whole-or-nothing files, a full disk, links, and the rules of a
results folder (refused when it would replace results; taken away after a failed start)."""
from __future__ import annotations

import errno
import os
import signal

import pytest
import torch

from rsnn_bfd import writing
from rsnn_bfd.writing import (DirectoryLock, DiskFullError, atomic_path, atomic_torch_save,
                              atomic_write_json, atomic_write_text, check_writable_dir,
                              claim_results_dir, remove_stale_temps, removed_if_unused)

from conftest import hold_lock


# ----------------------------------------------------------------------------- whole files
def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path):
    path = tmp_path / "results.json"
    atomic_write_json({"accuracy": 0.5}, path)
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half-writ")
            raise RuntimeError("killed half-way")
    assert path.read_text().strip().startswith("{") and "0.5" in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]   # no temporary left
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~umask


class _FullDisk:
    """``open`` whose files take ``room`` bytes, then fail with ENOSPC (a full disk)."""

    def __init__(self, room: int):
        self.room = room

    def __call__(self, path, mode="r", *args, **kwargs):
        fh = open(path, mode, *args, **kwargs)
        if "w" not in mode:
            return fh
        outer = self

        class Writer:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                fh.close()

            def write(self, data):
                if outer.room <= 0:
                    raise OSError(errno.ENOSPC, "No space left on device")
                n = min(len(data), outer.room)
                outer.room -= n
                return fh.write(bytes(data[:n]))

        return Writer()


def test_a_full_disk_keeps_the_last_good_file_and_says_which_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    atomic_torch_save({"epoch": 1, "w": torch.ones(1000)}, path)
    before = path.read_bytes()
    monkeypatch.setattr(writing, "open", _FullDisk(room=500), raising=False)
    with pytest.raises(DiskFullError) as info:
        atomic_torch_save({"epoch": 2, "w": torch.zeros(1000)}, path)
    msg = str(info.value)
    assert "no space left to write" in msg and str(path) in msg and "free on its disk" in msg
    assert "\n" not in msg
    assert path.read_bytes() == before                            # the last good checkpoint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth"]   # no temporary
    monkeypatch.setattr(writing, "open", _FullDisk(room=0), raising=False)
    with pytest.raises(DiskFullError):
        atomic_write_text("x" * 10, tmp_path / "new.txt")
    assert not (tmp_path / "new.txt").exists()
    assert writing.is_disk_full(info.value)
    assert writing.is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not writing.is_disk_full(OSError(errno.EACCES, "Permission denied"))


def test_a_link_is_never_written_through(tmp_path):
    target = tmp_path / "elsewhere.csv"
    target.write_text("the user's file")
    link = tmp_path / "results.csv"
    link.symlink_to(target)
    with pytest.raises(ValueError, match="is a symbolic link"):
        atomic_write_text("new", link)
    assert link.is_symlink() and target.read_text() == "the user's file"
    dangling = tmp_path / "out"
    dangling.symlink_to(tmp_path / "unmounted" / "disk")
    with pytest.raises(ValueError, match="which does not exist"):
        check_writable_dir(dangling)
    assert dangling.is_symlink() and not (tmp_path / "unmounted").exists()


def test_remove_stale_temps_deletes_only_interrupted_writes(tmp_path):
    for name in (".checkpoint.pth.abc123.tmp", ".best.pth.x.tmp", "checkpoint.pth",
                 ".other.pth.y.tmp", "notes.tmp"):
        (tmp_path / name).write_text("x")
    removed = remove_stale_temps(tmp_path, ("checkpoint.pth", "best.pth"))
    assert sorted(p.name for p in removed) == [".best.pth.x.tmp", ".checkpoint.pth.abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pth.y.tmp", "checkpoint.pth",
                                                          "notes.tmp"]


def test_check_writable_dir(tmp_path):
    assert check_writable_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir() and not list((tmp_path / "a" / "b").iterdir())
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="--figs .* is a file"):
        check_writable_dir(tmp_path / "f", "--figs")
    with pytest.raises(ValueError, match="cannot be written"):
        check_writable_dir(tmp_path / "f" / "sub")


# ----------------------------------------------------------------------------- the lock
def test_directory_lock_is_exclusive_and_names_its_holder(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(ValueError, match=rf"in use by process {holder.pid} \(holding, .*"
                                             r"started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\)"):
            DirectoryLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()


def test_directory_lock_is_shared_within_a_process(tmp_path):
    # a command that writes into a folder it holds already (deprivation into data/, where
    # it first generates the dataset) is not a second writer
    first = DirectoryLock(tmp_path, "test").acquire()
    assert first.acquire() is first                               # again: a no-op
    inner = DirectoryLock(tmp_path, "inner").acquire()
    inner.release()
    assert (tmp_path / ".lock").exists()                          # the outer holder goes on
    first.release()
    assert not (tmp_path / ".lock").exists()                      # released: the file goes
    with DirectoryLock(tmp_path):
        pass


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path, capsys):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(ValueError, match=rf"in use by process {holder.pid} \(holding"):
            DirectoryLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)           # dies holding it
        holder.wait()
    lock = DirectoryLock(tmp_path, "next").acquire()
    assert lock.previous.startswith(f"{holder.pid} ")  # whose it was, for the record
    assert f"was last held by process {holder.pid} (holding" in capsys.readouterr().err
    lock.release()
    DirectoryLock(tmp_path).acquire().release()       # released properly: no note
    assert capsys.readouterr().err == ""


def test_a_results_folder_is_locked_while_it_is_claimed(tmp_path):
    out = tmp_path / "out"
    holder = hold_lock(out)
    try:
        with pytest.raises(ValueError, match=rf"in use by process {holder.pid} \(holding"):
            claim_results_dir(out, ("b.csv",))
    finally:
        holder.kill()
        holder.wait()
    with claim_results_dir(out, ("b.csv",)):                      # the holder has gone
        pass


def test_results_of_the_same_kind_are_not_replaced_without_overwrite(tmp_path):
    names = ("a.csv", "a.json")
    out = tmp_path / "new" / "deep"
    claim_results_dir(out, names).release()                       # made, writable
    assert out.is_dir()
    (out / "a.csv").write_text("earlier")
    (out / "other.csv").write_text("not of this kind")
    with pytest.raises(ValueError, match=r"already holds the results \(a.csv\); replace them "
                                         r"with --overwrite, or choose another --out"):
        claim_results_dir(out, names, what="the results")
    claim_results_dir(out, names, overwrite=True).release()
    claim_results_dir(out, ("b.csv",)).release()                  # another kind: fine
    assert (out / "a.csv").read_text() == "earlier"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        claim_results_dir(a_file, names)


def test_a_folder_made_by_a_failed_start_is_removed_again(tmp_path):
    out = tmp_path / "runs" / "new"
    with pytest.raises(RuntimeError):
        with removed_if_unused(out):
            out.mkdir(parents=True)
            (out / ".lock").write_text("1 training")
            raise RuntimeError("bad data")
    assert not (tmp_path / "runs").exists()          # the parent made with it, too


def test_a_folder_that_existed_or_holds_work_is_kept(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(RuntimeError):
        with removed_if_unused(mine):
            raise RuntimeError("fails")
    assert mine.is_dir()
    made = tmp_path / "made"
    with pytest.raises(RuntimeError):
        with removed_if_unused(made):
            made.mkdir()
            (made / "checkpoint.pth").write_text("an epoch's work")
            raise RuntimeError("fails later")
    assert (made / "checkpoint.pth").read_text() == "an epoch's work"
    with removed_if_unused(tmp_path / "ok"):          # success: nothing is removed
        (tmp_path / "ok").mkdir()
    assert (tmp_path / "ok").is_dir()


def test_files_written_together_appear_together_or_not_at_all(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.json"
    atomic_write_text("old a", a)
    with pytest.raises(RuntimeError):
        with writing.together(a, b):
            atomic_write_text("new a", a)
            assert a.read_text() == "old a"          # not yet: renamed when the block ends
            atomic_write_json({"new": "b"}, b)
            raise RuntimeError("fails after both")
    assert a.read_text() == "old a" and not b.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv"]     # no temporaries
    with writing.together(a, b):
        atomic_write_text("new a", a)
        with writing.together(b):                    # nested: the outer block decides
            atomic_write_json({"new": "b"}, b)
        assert not b.exists()
    assert a.read_text() == "new a" and b.exists()


def test_together_holds_back_only_its_own_files(tmp_path):
    # the first command of the README generated its dataset inside the block of its results;
    # the dataset's files were held back with them and deleted when the command failed
    result, dataset = tmp_path / "out" / "result.csv", tmp_path / "data" / "train.h5"
    with pytest.raises(RuntimeError):
        with writing.together(result):
            atomic_write_text("data", dataset)
            assert dataset.read_text() == "data"     # written at once, as outside the block
            atomic_write_text("result", result)
            raise RuntimeError("fails later")
    assert dataset.read_text() == "data" and not result.exists()
    with writing.together(tmp_path / "out" / "." / "result.csv"):   # the same path, spelt
        atomic_write_text("result", result)                         # otherwise
        assert not result.exists()
    assert result.read_text() == "result"
