"""rsnn_bfd/cli.py: flags from config dataclasses, one-line usage errors, seeds, help text."""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import pytest

from rsnn_bfd.cli import SEED_MAX, build_parser, data_dir_check, flag, run_cli, seed_check


@dataclass
class _Config:
    engine: str = flag("auto", "engine", ("auto", "numba"))
    batch_size: int = flag(8, "batch size")
    out: str = flag(None, "output folder (default: the checkpoint's folder)", type=str)
    data_dir: str = flag("", "data folder")
    progress: bool = flag(True, "bars")


def _parse(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as info:
        build_parser(_Config, prog="script.py").parse_args(argv)
    return info.value.code, [ln for ln in err.getvalue().splitlines() if ln.strip()]


@pytest.mark.parametrize("argv, words", [
    (["--engine", "warp"], ["--engine: invalid choice: 'warp'"]),
    (["--batch-size", "3.5"], ["--batch-size: invalid int value: '3.5'"]),
    (["--no-such-flag"], ["unrecognized arguments: --no-such-flag"]),
    (["--batch-size"], ["--batch-size: expected one argument"]),
])
def test_usage_errors_are_one_line_naming_the_flag(argv, words):
    rc, lines = _parse(argv)
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: ") and lines[0].endswith("(see script.py --help)"), lines
    assert "usage:" not in lines[0]
    for w in words:
        assert w in lines[0], lines


def test_help_shows_each_default_once():
    text = build_parser(_Config, prog="script.py").format_help()
    assert "(default: )" not in text and text.count("(default:") == 3, text   # engine, batch, out
    assert "(default: the checkpoint's folder)" in text


def test_seed_check():
    assert seed_check(0, "--seed")[0] and seed_check(SEED_MAX, "--seed")[0]
    for bad in (-1, SEED_MAX + 1, 10 ** 23):
        ok, message = seed_check(bad, "--seed")
        assert not ok and message.startswith("--seed must be an integer in 0..")


def test_data_dir_check():
    assert data_dir_check(None)[0] and data_dir_check("data")[0] and data_dir_check(".")[0]
    ok, message = data_dir_check("  ")
    assert not ok and message == "--data-dir must name a folder, got '' (give . for the current folder)"
    assert data_dir_check("", "leave it out")[1].endswith("(leave it out)")


def test_run_cli_gives_one_line_and_exit_2():
    def main(argv):
        raise ValueError("--x is wrong\n  really")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert run_cli(main, []) == 2
    assert err.getvalue() == "error: --x is wrong really\n"
