"""Device choice and atomic writes."""
import os

import pytest
import torch

from rsnn_bfd.common import atomic_path, atomic_write_json, make_generator, select_device


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        select_device("tpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            select_device("cuda")


def test_a_device_that_is_not_there_is_refused():
    assert select_device("cpu:0") == torch.device("cpu:0")
    with pytest.raises(ValueError, match="--device cpu:3: there is one CPU device"):
        select_device("cpu:3")
    n = torch.cuda.device_count()
    with pytest.raises(ValueError, match="--device cuda:99"):
        select_device("cuda:99")
    if n:
        assert select_device(f"cuda:{n - 1}").index == n - 1


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


def test_make_generator_is_independent_of_the_global_rng():
    torch.manual_seed(0)
    a = torch.rand(3, generator=make_generator(5))
    torch.manual_seed(1)
    b = torch.rand(3, generator=make_generator(5))
    assert torch.equal(a, b)


def test_remove_stale_temps_deletes_only_interrupted_writes(tmp_path):
    from rsnn_bfd.common import remove_stale_temps
    for name in (".checkpoint.pth.abc123.tmp", ".best.pth.x.tmp", "checkpoint.pth",
                 ".other.pth.y.tmp", "notes.tmp"):
        (tmp_path / name).write_text("x")
    removed = remove_stale_temps(tmp_path, ("checkpoint.pth", "best.pth"))
    assert sorted(p.name for p in removed) == [".best.pth.x.tmp", ".checkpoint.pth.abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pth.y.tmp", "checkpoint.pth",
                                                          "notes.tmp"]


def test_check_writable_dir(tmp_path):
    from rsnn_bfd.common import check_writable_dir
    assert check_writable_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir() and not list((tmp_path / "a" / "b").iterdir())
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="--figs .* is a file"):
        check_writable_dir(tmp_path / "f", "--figs")
    with pytest.raises(ValueError, match="cannot be written"):
        check_writable_dir(tmp_path / "f" / "sub")


def test_directory_lock_is_exclusive_and_released(tmp_path):
    from rsnn_bfd.common import DirectoryLock
    first = DirectoryLock(tmp_path, "test").acquire()
    with pytest.raises(ValueError, match=f"in use by process {os.getpid()} \\(test\\)"):
        DirectoryLock(tmp_path).acquire()
    first.release()
    with DirectoryLock(tmp_path):
        pass


def test_machine_names_the_cpu_and_the_libraries():
    import json

    from rsnn_bfd.common import machine
    info = machine()
    assert info["cpu"] and info["torch"] == torch.__version__
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    json.dumps(info)   # goes into result.json
