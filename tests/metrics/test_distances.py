import numpy as np
import pytest
import scipy.linalg
import torch

from diffusion.metrics import (
    QualityResult,
    compare_features,
    default_kid_subset_size,
    frechet_distance,
    frechet_distance_between,
    gaussian_stats,
    kernel_inception_distance,
)


def random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    """A well-conditioned symmetric positive-definite matrix: A Aᵀ / d + 0.1 I."""
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def random_rotation(rng: np.random.Generator, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))  # (d, d) orthogonal


def sqrtm_frechet(mu1, sigma1, mu2, sigma2) -> float:
    """The reference (pytorch-fid) formula: Tr((S1 S2)^{1/2}) by scipy's general matrix square root."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("d", [1, 5, 64])
def test_identical_stats_give_zero(d):
    rng = np.random.default_rng(d)
    mu, sigma = rng.standard_normal(d), random_spd(rng, d)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)


@pytest.mark.parametrize("d", [1, 3, 32])
def test_diagonal_covariances_match_the_closed_form(d):
    rng = np.random.default_rng(10 + d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("d", [2, 8, 32])
def test_commuting_covariances_match_the_closed_form(d):
    """S1 = Q diag(a) Qᵀ and S2 = Q diag(b) Qᵀ commute; the trace term is then Σ √(a b), as if diagonal."""
    rng = np.random.default_rng(20 + d)
    q = random_rotation(rng, d)
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-9)  # rotations cost a few ulps per entry


def test_one_dimensional_case_is_the_squared_difference_of_means_and_of_standard_deviations():
    """In 1-D, W2² between N(m1, s1²) and N(m2, s2²) is (m1 - m2)² + (s1 - s2)²."""
    got = frechet_distance(np.array([0.3]), np.array([[4.0]]), np.array([-1.2]), np.array([[0.25]]))
    assert got == pytest.approx((0.3 + 1.2) ** 2 + (2.0 - 0.5) ** 2, rel=1e-12)


@pytest.mark.parametrize("c", [0.0, 0.3, 1.0, 2.5])
@pytest.mark.parametrize("d", [1, 7, 48])
def test_scaled_covariance_matches_the_closed_form(c, d):
    """S2 = c² S1: (S1^{1/2} S2 S1^{1/2})^{1/2} = c S1, so FD = ||Δμ||² + (1 - c)² Tr S1 (c = 0: S2 = 0)."""
    rng = np.random.default_rng(30 + d)
    mu1, mu2, sigma1 = rng.standard_normal(d), rng.standard_normal(d), random_spd(rng, d)
    expected = np.sum((mu1 - mu2) ** 2) + (1 - c) ** 2 * np.trace(sigma1)
    got = frechet_distance(mu1, sigma1, mu2, c**2 * sigma1)
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)  # c = 1 cancels to 0: absolute slack


@pytest.mark.parametrize("seed", range(5))
def test_general_two_by_two_covariances_match_the_closed_form(seed):
    """Non-commuting 2x2 S1, S2. M = S1 S2 has positive eigenvalues (it is similar to S1^{1/2} S2 S1^{1/2}),
    and for a 2x2 matrix with such eigenvalues Tr M^{1/2} = √λ1 + √λ2 = √(Tr M + 2 √det M)."""
    rng = np.random.default_rng(40 + seed)
    s1, s2 = random_spd(rng, 2), random_spd(rng, 2)
    assert not np.allclose(s1 @ s2, s2 @ s1)  # the commuting shortcut does not apply
    mu1, mu2 = rng.standard_normal(2), rng.standard_normal(2)
    m = s1 @ s2
    trace_sqrt = np.sqrt(np.trace(m) + 2 * np.sqrt(np.linalg.det(m)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("d", [2, 5, 64, 256])
def test_rank_one_covariances_match_the_closed_form(d):
    """S1 = u uᵀ and S2 = v vᵀ (rank 1, not commuting): S1^{1/2} = u uᵀ / |u|, so
    S1^{1/2} S2 S1^{1/2} = (u·v)² u uᵀ / |u|², whose square root has trace |u·v|;
    FD = ||Δμ||² + |u|² + |v|² - 2 |u·v|. All but one eigenvalue of each covariance is exactly zero."""
    rng = np.random.default_rng(50 + d)
    u, v = rng.standard_normal(d), rng.standard_normal(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + u @ u + v @ v - 2 * abs(u @ v)
    got = frechet_distance(mu1, np.outer(u, u), mu2, np.outer(v, v))
    # Exact to rounding because eigenvalues under the rank tolerance count as 0: with a plain clip at 0
    # their square roots (~1e-8 each) summed to a relative error of 1e-8 at d = 64.
    assert got == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("d", [4, 32])
def test_agrees_with_the_scipy_sqrtm_formula(seed, d):
    rng = np.random.default_rng(100 * seed + d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    sigma1, sigma2 = random_spd(rng, d), random_spd(rng, d)
    expected = sqrtm_frechet(mu1, sigma1, mu2, sigma2)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-6)


def test_is_symmetric():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((200, 16)), rng.standard_normal((300, 16)) * 1.5 + 0.2
    assert frechet_distance_between(a, b) == pytest.approx(frechet_distance_between(b, a), rel=1e-10)


def test_between_equals_the_distance_of_the_fitted_stats():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((50, 6)), rng.standard_normal((60, 6)) + 1.0
    assert frechet_distance_between(a, b) == frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


def test_rank_deficient_covariances_give_a_finite_non_negative_distance():
    """10 samples in 64 dimensions: both covariances have rank 9, most eigenvalues are rounding noise."""
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((10, 64)), rng.standard_normal((10, 64))
    distance = frechet_distance_between(a, b)
    assert np.isfinite(distance) and distance >= 0.0
    assert frechet_distance_between(a, a) == pytest.approx(0.0, abs=1e-8)


def test_gaussian_stats_are_float64_and_match_numpy():
    features = torch.randn(40, 5, generator=torch.Generator().manual_seed(0))  # float32 in
    mu, sigma = gaussian_stats(features)
    assert mu.dtype == sigma.dtype == np.float64 and mu.shape == (5,) and sigma.shape == (5, 5)
    x = features.double().numpy()
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("shape", [(1, 8), (0, 8), (8,)])
def test_gaussian_stats_rejects_too_few_or_misshapen_features(shape):
    with pytest.raises(ValueError, match=r"at least 2 feature vectors|must have shape \(n, d\)"):
        gaussian_stats(np.zeros(shape))


@pytest.mark.parametrize(
    "mu2, sigma2, message",
    [
        (np.zeros(3), np.eye(4), r"mu1 and mu2 must both have shape \(d,\), got \(4,\) and \(3,\)"),
        (np.zeros((4, 1)), np.eye(4), r"mu1 and mu2 must both have shape \(d,\), got \(4,\) and \(4, 1\)"),
        (np.zeros(4), np.eye(3), r"sigma1 and sigma2 must both have shape \(4, 4\), got \(4, 4\) and \(3, 3\)"),
        (np.zeros(4), np.full((4, 4), np.nan), r"means and covariances must be finite"),
    ],
)
def test_bad_shapes_or_values_are_value_errors(mu2, sigma2, message):
    with pytest.raises(ValueError, match=message):
        frechet_distance(np.zeros(4), np.eye(4), mu2, sigma2)


def gaussian_features(seed: int, n: int = 400, d: int = 16, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


def test_kid_of_one_distribution_is_near_zero():
    mean, std = kernel_inception_distance(
        gaussian_features(0), gaussian_features(1), subset_size=200, num_subsets=20, generator=torch.Generator()
    )
    # The estimator is unbiased, so the mean is zero up to sampling noise; the per-subset spread is
    # an upper bound on that noise (the subsets overlap, so the mean's error is not std / sqrt(20)).
    assert abs(mean) < 3 * std
    assert abs(mean) < 0.05  # for scale: the 0.5-shifted pair below gives about 1.2 (this pair gives 0.008)


def test_kid_of_shifted_distributions_is_clearly_positive():
    mean, std = kernel_inception_distance(
        gaussian_features(0), gaussian_features(1, shift=0.5), subset_size=200, num_subsets=20
    )
    assert mean > 0.5 and mean > 10 * std  # measured: 1.18 ± 0.07


def test_kid_is_reproducible_with_the_same_generator_and_varies_with_the_seed():
    a, b = gaussian_features(0), gaussian_features(1, shift=0.2)

    def kid(seed: int) -> tuple[float, float]:
        generator = torch.Generator().manual_seed(seed)
        return kernel_inception_distance(a, b, subset_size=100, num_subsets=5, generator=generator)

    assert kid(7) == kid(7)
    assert kid(7) != kid(8)
    assert kernel_inception_distance(a, b, 100, 5) == kernel_inception_distance(a, b, 100, 5)  # None: default seed


def test_kid_matches_the_formula_on_one_full_subset():
    """subset_size = n draws every row (in some order), so one subset is the whole-set estimate."""
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((30, 4)), rng.standard_normal((30, 4)) + 0.3

    def k(p: np.ndarray, q: np.ndarray) -> np.ndarray:
        return (p @ q.T / 4 + 1) ** 3  # d = 4

    def off_diagonal_sum(kk: np.ndarray) -> float:
        return kk.sum() - np.trace(kk)

    m = 30
    expected = (off_diagonal_sum(k(x, x)) + off_diagonal_sum(k(y, y))) / (m * (m - 1)) - 2 * k(x, y).mean()
    mean, std = kernel_inception_distance(x, y, subset_size=30, num_subsets=1)
    assert mean == pytest.approx(expected, rel=1e-12) and std == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"subset_size": 1}, r"subset_size must be in \[2, 50\]"),
        ({"subset_size": 51}, r"subset_size must be in \[2, 50\] \(the smaller set's size\), got 51"),
        ({"subset_size": 10, "num_subsets": 0}, r"num_subsets must be at least 1, got 0"),
    ],
)
def test_kid_rejects_bad_subsets(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kernel_inception_distance(np.zeros((50, 3)), np.zeros((80, 3)), **kwargs)


def test_kid_rejects_different_widths():
    with pytest.raises(ValueError, match="same width, got 3 and 4"):
        kernel_inception_distance(np.zeros((10, 3)), np.zeros((10, 4)), subset_size=5)


@pytest.mark.parametrize("n, expected", [(2, 2), (3, 2), (8, 4), (501, 250), (2000, 1000), (50_000, 1000)])
def test_default_kid_subset_size_is_half_the_set_at_most_1000(n, expected):
    assert default_kid_subset_size(n) == expected


def test_compare_features_labels_the_numbers_with_the_sample_counts():
    generated, reference = gaussian_features(0, n=40, d=6), gaussian_features(1, n=60, d=6, shift=0.5)
    result = compare_features(generated, reference, "toy", settings={"model": "m"}, generator=torch.Generator())
    assert isinstance(result, QualityResult)
    assert (result.num_images, result.num_reference, result.feature_dim) == (40, 60, 6)
    assert (result.label, result.kid_label) == ("FD@40", "KID@40")
    assert (result.kid_subset_size, result.kid_num_subsets) == (20, 100)  # min(40, 60) // 2
    assert result.fd == frechet_distance_between(generated, reference)
    kid = kernel_inception_distance(generated, reference, 20, 100, generator=torch.Generator())
    assert (result.kid, result.kid_std) == kid  # the same default-seeded generator draws the same subsets
    assert result.to_dict() == {
        "model": "m",
        "fd": result.fd,
        "kid": result.kid,
        "kid_std": result.kid_std,
        "num_images": 40,
        "num_reference": 60,
        "extractor": "toy",
        "feature_dim": 6,
        "kid_subset_size": 20,
        "kid_num_subsets": 100,
        "label": "FD@40",
        "kid_label": "KID@40",
    }


def test_compare_features_passes_kid_settings_through_and_rejects_bad_ones():
    a, b = gaussian_features(0, n=10, d=3), gaussian_features(1, n=10, d=3)
    result = compare_features(a, b, "toy", kid_subset_size=10, kid_num_subsets=1)
    assert (result.kid_subset_size, result.kid_num_subsets, result.kid_std) == (10, 1, 0.0)
    with pytest.raises(ValueError, match=r"subset_size must be in \[2, 10\]"):
        compare_features(a, b, "toy", kid_subset_size=11)
    with pytest.raises(ValueError, match="same width, got 3 and 2"):
        compare_features(a, b[:, :2], "toy")
