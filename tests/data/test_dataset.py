"""Loader tests: golden exactness, spike sampling, deprivation, bad files."""
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from rsnn_bfd.data.datasets import (RealValuedWhiskerDataset, SpikingWhiskerDataset, datasets_for,
                                    datasets_of_run, samples_by_class)
from rsnn_bfd.data.encoding import (drive_with_sweeps, drop_whiskers, parse_sweeps,
                                    realvalued_samples, spike_probabilities)
from rsnn_bfd.data.files import TEST_FILE, TRAIN_FILE, WhiskerDataError, load_whisker_file

from conftest import golden_cases, require_golden_file


# ----------------------------------------------------------------------------- golden cases
@pytest.mark.golden
@pytest.mark.parametrize("h5_path", golden_cases("*.h5"))
def test_golden_loader(h5_path):
    h5_path = Path(require_golden_file(h5_path))
    expected_path = h5_path.with_name(f"{h5_path.stem}_expected.npz")
    if not expected_path.is_file():
        pytest.skip(f"no {expected_path.name} beside {h5_path.name}")
    exp = np.load(expected_path)
    force, torque, labels = load_whisker_file(h5_path)
    np.testing.assert_array_equal(labels, exp["labels"])
    pf, pt = spike_probabilities(force, torque)
    np.testing.assert_allclose(pf, exp["prob_force"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pt, exp["prob_torque"], rtol=1e-6, atol=1e-6)
    rv = realvalued_samples(force, torque)
    assert rv.shape == exp["realvalued_sample"].shape
    np.testing.assert_allclose(rv, exp["realvalued_sample"], rtol=1e-6, atol=1e-6)

    ds = SpikingWhiskerDataset(h5_path)
    assert ds.spiking_shape == tuple(int(v) for v in exp["spiking_shape"])
    n = len(labels)
    np.testing.assert_allclose(ds.probs[:, 0].numpy(), exp["prob_force"].reshape(n, 12, 110, 93),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ds.probs[:, 1].numpy(), exp["prob_torque"].reshape(n, 12, 110, 93),
                               rtol=1e-6, atol=1e-6)
    x, y = ds[0]
    assert x.shape == (2, 12, 550, 93) and x.dtype == torch.uint8 and int(y) == exp["labels"][0]
    rds = RealValuedWhiskerDataset(h5_path)
    np.testing.assert_allclose(rds[n - 1][0].numpy(),
                               exp["realvalued_sample"][n - 1].reshape(1, 12, 110, 558), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- small files
def _write(path, force=None, torque=None, label=None, n=3, seed=0, skip=()):
    rng = np.random.default_rng(seed)
    shape = (n, 12, 110, 31, 3, 3)
    if force is None:
        force = (rng.normal(size=shape) * 20 * (rng.random(shape[:-1] + (1,)) < 0.4)).astype(np.float32)
    if torque is None:
        torque = (force * 8).astype(np.float32)
    if label is None:
        label = np.array([53.0, 55.0, 113.0] * n)[:n]
    with h5py.File(path, "w") as h5:
        for key, val in (("force", force), ("torque", torque), ("label", label)):
            if key not in skip:
                h5.create_dataset(key, data=val)
    return path


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("wd") / "small.h5", n=4)


def test_labels_and_shapes(small_file):
    force, torque, labels = load_whisker_file(small_file)
    assert force.shape == (4, 12, 110, 31, 3, 3) and force.dtype == np.float32
    assert labels.dtype == np.int64 and labels.tolist() == [0, 1, 2, 0]
    pf, pt = spike_probabilities(force, torque)
    assert pf.shape == (4, 12, 110, 31, 3) and pf.dtype == np.float32
    # the formula, including the zero floor
    norm = np.linalg.norm(force.astype(np.float64), axis=-1)
    norm[norm == 0] = 1e-5
    np.testing.assert_allclose(pf, 1 / (1 + np.exp(-(np.log(norm) - 2))), rtol=1e-6, atol=1e-7)
    assert realvalued_samples(force, torque).shape == (4, 1, 12, 110, 31, 18)


def test_realvalued_ordering(small_file):
    force, torque, _ = load_whisker_file(small_file)
    rv = realvalued_samples(force, torque)
    fn = torch.nn.functional.normalize(torch.from_numpy(force), dim=1)
    tn = torch.nn.functional.normalize(torch.from_numpy(torque), dim=1)
    ref = torch.cat([fn, tn], dim=-1).reshape(4, 1, 12, 110, 31, 18).numpy()
    np.testing.assert_allclose(rv, ref, rtol=1e-6, atol=1e-6)
    ds = RealValuedWhiskerDataset(small_file, n_steps=20)
    x, _ = ds[2]
    assert x.shape == (1, 12, 20, 558) and x.dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), ref[2][:, :, :20].reshape(1, 12, 20, 558), rtol=1e-6, atol=1e-6)


def test_datasets_of_run_reads_what_the_run_read(small_file):
    """A run's stored train_config names its data folder, length, spike seed and features;
    given values replace them."""
    import shutil
    folder = small_file.parent
    for name in (TRAIN_FILE, TEST_FILE):
        if not (folder / name).exists():
            shutil.copy(small_file, folder / name)
    tc = {"data_dir": str(folder), "n_steps": 30, "spike_seed": 7, "features": "signed-log"}
    test, = datasets_of_run("spiking", {**tc, "features": "published"}, splits=("test",))
    assert (test.n_steps, test.seed, test.path) == (30, 7, folder / TEST_FILE)
    train, test = datasets_of_run("realvalued", tc)
    assert train.features == "signed-log" and train.n_steps == 30
    test, = datasets_of_run("spiking", {**tc, "features": "published"}, n_steps=0,
                            spike_seed=2, splits=("test",))
    assert (test.n_steps, test.seed) == (550, 2)
    with pytest.raises(WhiskerDataError, match="nowhere"):
        datasets_of_run("spiking", {}, data_dir=folder / "nowhere", splits=("test",))


def test_parse_sweeps():
    assert parse_sweeps("0") == (0,)
    assert parse_sweeps("0-3") == (0, 1, 2, 3)
    assert parse_sweeps("8,0,4-5") == (0, 4, 5, 8)
    assert parse_sweeps("all") == tuple(range(12))
    for bad in ("12", "x", "3-1", "", "0-"):
        with pytest.raises(ValueError, match="sweeps must"):
            parse_sweeps(bad)


def test_drive_with_sweeps_puts_the_chosen_sweep_in_the_driving_slot(small_file):
    ds = SpikingWhiskerDataset(small_file, n_steps=20)
    x = torch.stack([ds[0][0], ds[1][0], ds[2][0]])
    out = drive_with_sweeps(x, torch.tensor([3, 0, 11]))
    assert torch.equal(out[0, :, 0], x[0, :, 3]) and torch.equal(out[1], x[1])
    assert torch.equal(out[2, :, 0], x[2, :, 11])
    assert torch.equal(out[:, :, 1:], x[:, :, 1:])          # the other sweeps unchanged
    assert torch.equal(drive_with_sweeps(x, torch.tensor([5, 5, 5]), driving=2)[:, :, 2],
                       x[:, :, 5])
    with pytest.raises(ValueError, match="drive_with_sweeps expects"):
        drive_with_sweeps(x, torch.tensor([0, 1]))


def test_drop_whiskers_equals_deprivation(small_file):
    """``drop_whiskers`` (the --whisker-dropout augmentation) zeroes each sample's dropped
    whiskers: for real values exactly the deprived dataset's input, for spikes all lines of
    those whiskers (the rest unchanged)."""
    intact = RealValuedWhiskerDataset(small_file, n_steps=20, features="signed-log")
    keep = torch.ones(2, 31, dtype=torch.bool)
    keep[0, [3, 17]] = False
    keep[1, 30] = False
    x = torch.stack([intact[0][0], intact[1][0]])
    dropped = drop_whiskers(x, keep)
    for j, whiskers in enumerate(((3, 17), (30,))):
        assert torch.equal(dropped[j], intact.deprived(whiskers)[j][0])
    spikes = SpikingWhiskerDataset(small_file, n_steps=20)
    xs = torch.stack([spikes[0][0], spikes[1][0]])
    ds = drop_whiskers(xs, keep)
    assert ds.dtype == torch.uint8
    lines = ds.reshape(2, 2, 12, 20, 31, 3)
    assert not lines[0, ..., [3, 17], :].any() and not lines[1, ..., 30, :].any()
    assert torch.equal(lines[0, ..., 4, :], xs.reshape(2, 2, 12, 20, 31, 3)[0, ..., 4, :])
    with pytest.raises(ValueError, match="keep must have shape"):
        drop_whiskers(xs, keep[:1])
    with pytest.raises(ValueError, match="31 \\* k"):
        drop_whiskers(xs[..., :10], keep)


def test_realvalued_signed_log_features(small_file):
    """``features="signed-log"``: sign(v) log(1 + |v|) per component, same layout; a deprived
    whisker reads zero, and ``deprived()`` equals loading with the whiskers deprived."""
    force, torque, _ = load_whisker_file(small_file)
    rv = realvalued_samples(force, torque, "signed-log")
    f64, t64 = force.astype(np.float64), torque.astype(np.float64)
    ref = np.concatenate([np.sign(f64) * np.log1p(np.abs(f64)),
                          np.sign(t64) * np.log1p(np.abs(t64))], -1).reshape(4, 1, 12, 110, 31, 18)
    np.testing.assert_allclose(rv, ref, rtol=1e-6, atol=1e-7)
    assert np.abs(rv).max() > 1.5   # magnitudes survive (the published features lie in [-1, 1])
    ds = RealValuedWhiskerDataset(small_file, n_steps=20, features="signed-log")
    assert ds.features == "signed-log"
    np.testing.assert_allclose(ds[2][0].numpy(), rv[2][:, :, :20].reshape(1, 12, 20, 558), rtol=1e-6)
    dep = (0, 7, 30)
    loaded = RealValuedWhiskerDataset(small_file, deprived_whiskers=dep, features="signed-log")
    view = RealValuedWhiskerDataset(small_file, features="signed-log").deprived(dep)
    assert torch.equal(loaded.samples, view.samples)
    assert not loaded[0][0].reshape(1, 12, 110, 31, 18)[..., list(dep), :].any()
    with pytest.raises(ValueError, match="real-valued features must be one of"):
        RealValuedWhiskerDataset(small_file, features="log")
    with pytest.raises(ValueError, match="real-valued input only"):
        datasets_for("spiking", small_file.parent, features="signed-log")


def test_spiking_reproducible_and_epochs(small_file):
    a = SpikingWhiskerDataset(small_file, seed=3, n_steps=100)
    b = SpikingWhiskerDataset(small_file, seed=3, n_steps=100)
    c = SpikingWhiskerDataset(small_file, seed=4, n_steps=100)
    x0, y0 = a[1]
    assert x0.shape == (2, 12, 100, 93) and x0.dtype == torch.uint8 and y0.dtype == torch.int64
    assert torch.equal(x0, b[1][0])
    assert not torch.equal(x0, c[1][0])
    a.set_epoch(5)  # drawn once: epoch does not matter
    assert torch.equal(x0, a[1][0])
    r = SpikingWhiskerDataset(small_file, seed=3, resample_each_epoch=True, n_steps=100)
    r0 = r[1][0]
    assert torch.equal(r0, x0)  # epoch 0 is the same draw
    r.set_epoch(1)
    r1 = r[1][0]
    assert not torch.equal(r0, r1)
    r.set_epoch(0)
    assert torch.equal(r[1][0], r0)
    # a truncated sequence is a prefix of the full one
    full = SpikingWhiskerDataset(small_file, seed=3)[1][0]
    assert full.shape == (2, 12, 550, 93)
    assert torch.equal(full[:, :, :100], x0)
    assert a.labels.dtype == torch.int64 and a.spiking_shape == (4, 2, 12, 550, 31, 3)


def test_spikes_drawn_once_are_kept_and_not_pickled(small_file):
    import pickle
    ds = SpikingWhiskerDataset(small_file, seed=3, n_steps=40)
    x = ds[2][0]
    assert ds[2][0] is x                                   # kept, not drawn again
    fresh = SpikingWhiskerDataset(small_file, seed=3, n_steps=40)
    assert torch.equal(fresh[2][0], x)
    assert pickle.loads(pickle.dumps(ds))._drawn == {}     # workers draw their own
    dep = ds.deprived([0, 5])                              # new probabilities: drawn anew
    assert dep[2][0] is not x
    assert torch.equal(dep[2][0], SpikingWhiskerDataset(small_file, seed=3, n_steps=40,
                                                        deprived_whiskers=[0, 5])[2][0])
    r = SpikingWhiskerDataset(small_file, seed=3, n_steps=40, resample_each_epoch=True)
    r0 = r[2][0]
    r.set_epoch(1)
    assert not torch.equal(r[2][0], r0) and r._drawn == {}


def test_spike_rate_matches_probability(small_file):
    ds = SpikingWhiskerDataset(small_file, seed=0)
    x = torch.stack([ds[i][0] for i in range(len(ds))]).double()  # (4, 2, 12, 550, 93)
    p = ds.probs.double().repeat_interleave(5, dim=3)
    assert abs(x.mean().item() - p.mean().item()) < 2e-3
    # per bin of probability
    for lo, hi in ((0.0, 0.05), (0.3, 0.7), (0.9, 1.0)):
        m = (p >= lo) & (p < hi)
        if m.sum() > 1000:
            assert abs(x[m].mean().item() - p[m].mean().item()) < 0.01
    # every step is repeated 5 times before sampling: probabilities are constant within a block
    assert torch.equal(p[..., 0::5, :], p[..., 4::5, :])


def test_deprivation(small_file):
    dep = (0, 7, 30)
    intact = SpikingWhiskerDataset(small_file, seed=1, n_steps=50)
    deprived = SpikingWhiskerDataset(small_file, seed=1, n_steps=50, deprived_whiskers=dep)
    xi, xd = intact[0][0].reshape(2, 12, 50, 31, 3), deprived[0][0].reshape(2, 12, 50, 31, 3)
    keep = [w for w in range(31) if w not in dep]
    assert torch.equal(xi[..., keep, :], xd[..., keep, :])
    assert xd[..., list(dep), :].float().mean() < 1e-4  # only the 1e-5 floor remains
    f, t, _ = load_whisker_file(small_file, deprived_whiskers=dep)
    assert not f[:, :, :, list(dep)].any() and not t[:, :, :, list(dep)].any()
    assert f[:, :, :, keep].any()
    rv = RealValuedWhiskerDataset(small_file, deprived_whiskers=dep)[0][0].reshape(1, 12, 110, 31, 18)
    assert not rv[..., list(dep), :].any()
    with pytest.raises(ValueError):
        load_whisker_file(small_file, deprived_whiskers=(31,))


def test_samples_by_class(small_file):
    ds = SpikingWhiskerDataset(small_file, n_steps=10)
    groups = samples_by_class(ds)
    assert sorted(groups) == [0, 1, 2]
    assert groups[0].shape == (2, 2, 12, 10, 93)
    assert torch.equal(groups[0][1], ds[3][0])


# ----------------------------------------------------------------------------- bad files
def _expect_error(path, fragment):
    with pytest.raises(WhiskerDataError) as info:
        load_whisker_file(path)
    msg = str(info.value)
    assert fragment in msg
    assert "whisker_sim.py --out" in msg and "\n" not in msg
    with pytest.raises(WhiskerDataError):
        SpikingWhiskerDataset(path)


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "nope.h5", "not found")


def test_not_hdf5(tmp_path):
    p = tmp_path / "junk.h5"
    p.write_text("hello")
    _expect_error(p, "HDF5")


@pytest.mark.parametrize("key", ["force", "torque", "label"])
def test_missing_key(tmp_path, key):
    _expect_error(_write(tmp_path / "k.h5", skip=(key,)), f"missing dataset '{key}'")


def test_wrong_shape(tmp_path):
    f = np.zeros((3, 12, 100, 31, 3, 3), np.float32)
    _expect_error(_write(tmp_path / "s.h5", force=f, torque=f), "shape")
    g = np.zeros((3, 12, 110, 31, 3, 3), np.float32)
    _expect_error(_write(tmp_path / "l.h5", force=g, torque=g, label=np.array([53.0, 55.0])), "shape")


def test_unknown_label(tmp_path):
    _expect_error(_write(tmp_path / "u.h5", label=np.array([53.0, 54.0, 113.0])), "unknown label")


@pytest.mark.parametrize("key", ["force", "torque"])
@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "Inf")])
def test_non_finite(tmp_path, key, bad, word):
    arr = np.ones((3, 12, 110, 31, 3, 3), np.float32)
    arr[1, 4, 50, 7, 2, 1] = bad
    kw = {key: arr}
    _expect_error(_write(tmp_path / "n.h5", **kw), word)


def test_empty_file(tmp_path):
    empty = np.zeros((0, 12, 110, 31, 3, 3), np.float32)
    _expect_error(_write(tmp_path / "e.h5", force=empty, torque=empty, label=np.zeros(0)),
                  "holds no samples")


def test_string_labels(tmp_path):
    labels = np.array([b"helmet", b"box", b"plane"])
    _expect_error(_write(tmp_path / "str.h5", label=labels), "dataset 'label' holds")
