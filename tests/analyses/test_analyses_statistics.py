"""analyses.statistics: the numbers of the analyses, checked against scipy and by hand."""
import math

import numpy as np
import pytest
from scipy import stats

from rsnn_bfd.analyses import statistics


def test_anova_matches_scipy():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [5, 7, 6])
    counts = rng.poisson(3.0, size=(18, 40)).astype(float)
    counts[labels == 1, :10] += 4
    F, p = statistics.anova_oneway(counts, labels)
    for j in range(counts.shape[1]):
        ref = stats.f_oneway(*(counts[labels == c, j] for c in range(3)))
        assert F[j] == pytest.approx(ref.statistic, rel=1e-10)
        assert p[j] == pytest.approx(ref.pvalue, rel=1e-8, abs=1e-300)


def test_anova_selective_and_not_selective():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], 10)
    counts = np.zeros((30, 4))
    counts[:, 0] = np.where(labels == 0, 20 + rng.integers(0, 3, 30), rng.integers(0, 2, 30))
    counts[:, 1] = np.tile([1, 2, 3, 4, 5], 6)          # the same distribution in each class
    counts[:, 2] = 7                                    # constant: zero variance
    counts[:, 3] = labels                               # differs only between classes
    F, p = statistics.anova_oneway(counts, labels)
    assert p[0] < 1e-10 and p[0] < 0.001
    assert F[1] == pytest.approx(0.0) and p[1] == pytest.approx(1.0)
    assert np.isnan(F[2]) and p[2] == 1.0
    assert np.isinf(F[3]) and p[3] == 0.0
    with pytest.raises(ValueError):
        statistics.anova_oneway(counts[:3], labels[:3])


def test_class_proportions_and_ternary():
    counts = np.array([[4, 0, 1], [4, 0, 1], [0, 0, 1], [0, 0, 1]], float)
    labels = np.array([0, 0, 1, 2])
    props = statistics.class_proportions(counts, labels)
    np.testing.assert_allclose(props[0], [1, 0, 0])
    assert np.all(np.isnan(props[1]))                  # silent neuron
    np.testing.assert_allclose(props[2], [1 / 3] * 3)
    x, y = statistics.ternary_xy(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]]))
    np.testing.assert_allclose(x, [0, 1, 0.5])
    np.testing.assert_allclose(y, [0, 0, math.sqrt(3) / 2])


def test_minmax_and_pearson():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=13), rng.normal(size=13)
    y[:5] += x[:5]
    r, p = statistics.pearson(x, y)
    ref = stats.pearsonr(x, y)
    assert r == pytest.approx(ref[0], rel=1e-12)
    assert p == pytest.approx(ref[1], rel=1e-9)
    np.testing.assert_allclose(statistics.minmax([2.0, 4.0, 3.0]), [0, 1, 0.5])
    np.testing.assert_array_equal(statistics.minmax([3.0, 3.0]), [0, 0])
    assert statistics.pearson(statistics.minmax(x), statistics.minmax(y))[0] == pytest.approx(r)
    assert math.isnan(statistics.pearson([1.0, 1, 1], [1.0, 2, 3])[0])


def test_binned_and_isi_cv_by_hand():
    a = np.array([1, 0, 0, 1, 0, 0, 1, 0, 0, 0])          # p = 0.3; ISIs 3, 3
    b = np.array([1, 1, 0, 0, 1, 0, 0, 0, 0, 0])          # p = 0.3; ISIs 1, 3
    c = np.zeros(10)                                      # silent
    d = np.array([0, 0, 1, 0, 0, 0, 0, 1, 0, 0])          # one ISI only
    S = np.stack([a, b, c, d], axis=1)                    # (T, trains)
    cv = statistics.binned_cv(S, reduce=False)
    assert cv[0] == pytest.approx(math.sqrt(0.7 / 0.3))
    assert cv[1] == pytest.approx(math.sqrt(0.7 / 0.3))
    assert cv[3] == pytest.approx(math.sqrt(0.8 / 0.2))
    assert np.isnan(cv[2])
    assert statistics.binned_cv(S) == pytest.approx((2 * math.sqrt(0.7 / 0.3) + 2.0) / 3)
    icv = statistics.isi_cv(S, reduce=False)
    assert icv[0] == pytest.approx(0.0) and icv[1] == pytest.approx(0.5)
    assert np.isnan(icv[2]) and np.isnan(icv[3])
    assert statistics.isi_cv(S) == pytest.approx(0.25)
    # (T, batch, neurons) layout, the model's
    S3 = np.stack([S, S[:, ::-1]], axis=1)
    assert statistics.binned_cv(S3, reduce=False).shape == (2, 4)
    assert statistics.isi_cv(S3, reduce=False)[1, 2] == pytest.approx(0.5)


def test_bernoulli_binned_cv_tracks_rate():
    rng = np.random.default_rng(3)
    for p in (0.05, 0.2):
        s = (rng.random((20000, 5)) < p).astype(float)
        assert statistics.binned_cv(s) == pytest.approx(math.sqrt((1 - p) / p), rel=0.03)
        assert statistics.isi_cv(s) == pytest.approx(math.sqrt(1 - p), rel=0.05)   # geometric ISIs
