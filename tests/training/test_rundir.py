"""rundir.py: result folders that are refused when they would replace results, and folders
that a failed start takes away again."""
from __future__ import annotations

import pytest

from rsnn_bfd.training.rundir import claim_results_dir, removed_if_unused


def test_results_of_the_same_kind_are_not_replaced_without_overwrite(tmp_path):
    names = ("a.csv", "a.json")
    out = claim_results_dir(tmp_path / "new" / "deep", names)       # made, writable
    assert out.is_dir()
    (out / "a.csv").write_text("earlier")
    (out / "other.csv").write_text("not of this kind")
    with pytest.raises(ValueError, match=r"already holds the results \(a.csv\); replace them "
                                         r"with --overwrite, or choose another --out"):
        claim_results_dir(out, names, what="the results")
    assert claim_results_dir(out, names, overwrite=True) == out
    assert claim_results_dir(out, ("b.csv",)) == out                 # another kind: fine
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
