import numpy as np
import pytest
import scipy.linalg
import torch

from diffusion.metrics import (
    extract_features,
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


class Flatten(torch.nn.Module):
    """A stand-in feature extractor: features are the flattened pixels times a learnable scale."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(2.0))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x.flatten(1)


@pytest.mark.parametrize("batch_size", [1, 3, 256])
def test_extract_features_batches_and_restores_the_mode(batch_size):
    images = torch.rand(7, 1, 2, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    model = Flatten().train()
    features = extract_features(model, images, batch_size=batch_size)
    torch.testing.assert_close(features, 2 * images.flatten(1), rtol=0, atol=0)
    assert features.dtype == torch.float32 and not features.requires_grad
    assert model.training


@pytest.mark.parametrize(
    "images, batch_size, message",
    [
        (torch.zeros(4, 2, 2), 8, r"images must have shape \(n, channels, height, width\) with n >= 1"),
        (torch.zeros(0, 1, 2, 2), 8, r"with n >= 1, got \(0, 1, 2, 2\)"),
        (torch.full((2, 1, 2, 2), 255.0), 8, r"images must be in \[-1, 1\], found values in \[255, 255\]"),
        (torch.zeros(2, 1, 2, 2), 0, r"batch_size must be at least 1, got 0"),
    ],
)
def test_extract_features_rejects_bad_input(images, batch_size, message):
    with pytest.raises(ValueError, match=message):
        extract_features(Flatten(), images, batch_size=batch_size)
