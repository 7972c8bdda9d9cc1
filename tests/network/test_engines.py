"""engines/__init__.py: names, resolution, options and the model-engine contract."""
import pytest
import torch

from rsnn_bfd.network.engines import EngineOptions, resolve, signed_recurrent
from rsnn_bfd.network.model import ModelConfig, build_model


def test_resolve_names_and_devices():
    assert resolve("auto", "cpu") == "numba"
    assert resolve("auto", "cuda") == "torch"
    assert resolve("fast", "cpu") == "numba"            # the name of older versions
    for name in ("reference", "numba", "torch"):
        assert resolve(name, "cpu") == name
    assert resolve("torch", "cuda") == "torch"
    assert resolve("reference", "cuda") == "reference"
    with pytest.raises(ValueError, match="CPU only"):
        resolve("numba", "cuda")                        # never swapped for torch
    with pytest.raises(ValueError, match="engine must be one of"):
        resolve("warp", "cpu")


def test_options_from_the_environment_when_asked():
    assert EngineOptions.from_env({}) == EngineOptions(chunk=None, cuda_graphs=True)
    assert EngineOptions.from_env({"ENGINE_CHUNK": "8", "ENGINE_CUDA_GRAPHS": "0"}) == \
        EngineOptions(chunk=8, cuda_graphs=False)
    assert EngineOptions.from_env({"ENGINE_RECURRENT_INPUT": "gather"}) == \
        EngineOptions(recurrent_input="gather")
    for env, word in (({"ENGINE_CHUNK": "x"}, "ENGINE_CHUNK"), ({"ENGINE_CHUNK": "0"}, "ENGINE_CHUNK"),
                      ({"ENGINE_CUDA_GRAPHS": "yes"}, "ENGINE_CUDA_GRAPHS"),
                      ({"ENGINE_RECURRENT_INPUT": "dense"}, "ENGINE_RECURRENT_INPUT")):
        with pytest.raises(ValueError, match=word):
            EngineOptions.from_env(env)
    with pytest.raises(ValueError, match="recurrent_input must be one of"):
        EngineOptions(recurrent_input="dense")


def test_the_network_record_and_caches_off_the_model():
    model = build_model(ModelConfig(), dtype=torch.float64)
    net = model.network()
    assert net.recurrent is model.recurrent.weight and net.tau_m is model.tau_m
    assert net.offsets == tuple(model.population_offsets) and net.n_classes == 3
    torch.testing.assert_close(signed_recurrent(net), model.signed_recurrent_weight())
    before = set(model.__dict__)
    x = (torch.rand(2, 2, 12, 4, 93, generator=torch.Generator().manual_seed(0)) < 0.3).double()
    outs = {name: model(x, engine=name).output for name in ("reference", "numba", "torch")}
    assert set(model.__dict__) == before                       # engines cache elsewhere
    torch.testing.assert_close(outs["numba"], outs["reference"])
    torch.testing.assert_close(outs["torch"], outs["reference"])
    assert model.resolved_engine() == "numba" and model.engine == "auto"
