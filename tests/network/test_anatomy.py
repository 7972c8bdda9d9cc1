"""The anatomy table: contents, validation, and realised connection densities."""
import copy
import json

import numpy as np
import pytest

from rsnn_bfd.network.anatomy import (DEFAULT_ANATOMY, AnatomyError, anatomy_from_dict,
                                      load_anatomy)
from rsnn_bfd.network.model import BarrelCortexRSNN, ModelConfig


@pytest.fixture(scope="module")
def table():
    return json.loads(DEFAULT_ANATOMY.read_text())


def test_table_contents():
    a = load_anatomy()
    assert a.n_neurons == 4218 and len(a.populations) == 13
    assert (a.p_rec > 0).sum() == 113 and (a.p_thal > 0).sum() == 11
    assert sum(p.excitatory for p in a.populations) == 3
    assert (a.p_rec[:4, 4:] == 0).all(), "no L2/3 -> L4 projection"
    assert "Huang" in a.provenance
    assert list(a.offsets[[0, -1]]) == [0, 4218]


@pytest.fixture(scope="module")
def model():
    return BarrelCortexRSNN(ModelConfig(seed=11))


def test_realised_densities_match_the_table_within_binomial_error(model):
    a = model.anatomy
    mask = model.recurrent.mask.numpy()
    off = a.offsets
    for post in range(13):
        for pre in range(13):
            block = mask[off[post]:off[post + 1], off[pre]:off[pre + 1]]
            p, n = a.p_rec[post, pre], block.size
            if p == 0:
                assert block.sum() == 0, (pre, post)
                continue
            sd = np.sqrt(p * (1 - p) / n)
            assert abs(block.mean() - p) <= 5 * sd + 1e-12, (a.names[pre], a.names[post])
    th = model.thalamocortical.mask.numpy()
    for post in range(13):
        block = th[off[post]:off[post + 1]]
        p, n = a.p_thal[post], block.size
        assert abs(block.mean() - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-12


def test_unknown_population_is_refused(table):
    bad = copy.deepcopy(table)
    bad["connections"]["Pyr"]["Inh_Missing"] = 0.1
    with pytest.raises(AnatomyError, match="unknown population"):
        anatomy_from_dict(bad)


def test_population_missing_from_connections_is_refused(table):
    bad = copy.deepcopy(table)
    del bad["connections"]["Inh_NG"]
    with pytest.raises(AnatomyError, match="Inh_NG"):
        anatomy_from_dict(bad)


def test_dropped_population_is_refused(table):
    bad = copy.deepcopy(table)
    bad["populations"] = [p for p in bad["populations"] if p["name"] != "Inh_Mar"]
    with pytest.raises(AnatomyError, match="Inh_Mar"):
        anatomy_from_dict(bad)


@pytest.mark.parametrize("value", [1.5, -0.1, float("nan"), "high"])
def test_probability_outside_unit_interval_is_refused(table, value):
    bad = copy.deepcopy(table)
    bad["connections"]["Pyr"]["Inh_NG"] = value
    with pytest.raises(AnatomyError, match="Pyr -> Inh_NG"):
        anatomy_from_dict(bad)


def test_bad_type_size_and_missing_file(table, tmp_path):
    bad = copy.deepcopy(table)
    bad["populations"][0]["type"] = "X"
    with pytest.raises(AnatomyError, match="type"):
        anatomy_from_dict(bad)
    bad = copy.deepcopy(table)
    bad["populations"][0]["size"] = 0
    with pytest.raises(AnatomyError, match="size"):
        anatomy_from_dict(bad)
    with pytest.raises(AnatomyError, match="not found"):
        load_anatomy(tmp_path / "nope.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(AnatomyError, match="not valid JSON"):
        load_anatomy(tmp_path / "broken.json")
