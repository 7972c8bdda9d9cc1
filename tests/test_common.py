"""Device choice, generators, the machine record."""
import pytest
import torch

from rsnn_bfd.common import make_generator, select_device


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


def test_make_generator_is_independent_of_the_global_rng():
    torch.manual_seed(0)
    a = torch.rand(3, generator=make_generator(5))
    torch.manual_seed(1)
    b = torch.rand(3, generator=make_generator(5))
    assert torch.equal(a, b)


def test_machine_names_the_cpu_and_the_libraries():
    import json

    from rsnn_bfd.common import machine
    info = machine()
    assert info["cpu"] and info["torch"] == torch.__version__
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    json.dumps(info)   # goes into result.json
