"""Distances between two feature sets: Fréchet distance, kernel distance (KID), and their labelled result.

- Fréchet distance (FD; "FID" with the TF Inception-v3 of Heusel et al. 2017, "GANs Trained by a
  Two Time-Scale Update Rule Converge to a Local Nash Equilibrium"): the 2-Wasserstein distance
  between Gaussians fitted to the two feature sets,
  ``||mu1 - mu2||² + Tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2})``. Biased for finite samples: it
  is only comparable between sets of the same size, hence the ``FD@N`` labels of `QualityResult`.
- Kernel distance (KID; Bińkowski et al. 2018, "Demystifying MMD GANs"): the unbiased estimate of
  the squared maximum mean discrepancy with the cubic polynomial kernel ``k(x, y) = (x·y / d + 1)³``,
  averaged over random subsets. Unbiased, so it can be slightly negative, and it is comparable across
  sample sizes: prefer it to FD when only a few hundred images can be afforded.

All statistics are computed in float64.
"""

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

KID_SUBSET_SIZE = 1000  # rows per KID subset at most (Bińkowski et al. 2018 and torch-fidelity use 1000)
KID_NUM_SUBSETS = 100  # KID subsets averaged by default


def _as_matrix(name: str, features: torch.Tensor | np.ndarray) -> np.ndarray:
    """``features`` as a finite float64 ``(n, d)`` array, or a ``ValueError`` naming ``name``."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().to(torch.float64).numpy()
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d), got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def gaussian_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a feature set, in float64.

    Args:
        features: ``(n, d)`` with ``n >= 2``.

    Returns:
        ``mu`` ``(d,)`` and ``sigma`` ``(d, d)``, the unbiased (``n - 1``) sample covariance, as in the
        reference FID implementation.

    Raises:
        ValueError: ``features`` is not a finite ``(n, d)`` array with at least two rows.
    """
    x = _as_matrix("features", features)
    if x.shape[0] < 2:
        raise ValueError(f"gaussian_stats needs at least 2 feature vectors for a covariance, got {x.shape[0]}")
    mu = x.mean(axis=0)  # (d,)
    centred = x - mu  # (n, d)
    sigma = centred.T @ centred / (x.shape[0] - 1)  # (d, d)
    return mu, sigma


def _sqrt_eigenvalues(eigenvalues: np.ndarray) -> np.ndarray:
    """√λ of a symmetric PSD matrix's eigenvalues; those below the rounding level count as exactly 0."""
    # eigh's absolute error is about d · eps · max|λ|, so a zero eigenvalue (a singular covariance) comes
    # back as a tiny ±value whose square root is far larger. Below numpy.linalg.matrix_rank's tolerance
    # (d · eps · max λ) an eigenvalue cannot be told from zero; negative ones are rounding too.
    tolerance = len(eigenvalues) * np.finfo(np.float64).eps * max(float(eigenvalues.max(initial=0.0)), 0.0)
    return np.sqrt(np.where(eigenvalues > tolerance, eigenvalues, 0.0))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root ``V diag(√λ) Vᵀ`` of a symmetric PSD matrix (see `_sqrt_eigenvalues`)."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * _sqrt_eigenvalues(eigenvalues)) @ eigenvectors.T  # V diag(√λ) Vᵀ


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), the FID formula of Heusel et al. 2017.

    ``||mu1 - mu2||² + Tr(S1) + Tr(S2) - 2 Tr((S1^{1/2} S2 S1^{1/2})^{1/2})``. The last trace equals
    the ``Tr((S1 S2)^{1/2})`` of the paper (S1 S2 is similar to S1^{1/2} S2 S1^{1/2}), but the
    symmetric form needs only symmetric eigendecompositions in float64, no complex ``sqrtm``, and
    stays real and finite for singular covariances (fewer samples than dimensions).

    Args:
        mu1, mu2: means ``(d,)``.
        sigma1, sigma2: covariances ``(d, d)``, symmetric positive semi-definite (each is symmetrised).

    Returns:
        The distance, ``>= 0`` (rounding below zero is clamped).

    Raises:
        ValueError: shapes that do not match, or non-finite values.
    """
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    sigma1, sigma2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"mu1 and mu2 must both have shape (d,), got {mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"sigma1 and sigma2 must both have shape ({d}, {d}), got {sigma1.shape} and {sigma2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, sigma1, sigma2)):
        raise ValueError("means and covariances must be finite")
    sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2  # eigh reads one triangle only
    root1 = _psd_sqrt(sigma1)  # S1^{1/2}
    inner = root1 @ sigma2 @ root1  # S1^{1/2} S2 S1^{1/2}: symmetric PSD up to rounding
    eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2)
    trace_sqrt = _sqrt_eigenvalues(eigenvalues).sum()  # Tr((S1^{1/2} S2 S1^{1/2})^{1/2})
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
    return max(float(distance), 0.0)


def frechet_distance_between(features_a: torch.Tensor | np.ndarray, features_b: torch.Tensor | np.ndarray) -> float:
    """`frechet_distance` of the Gaussians fitted (`gaussian_stats`) to two ``(n, d)`` feature sets."""
    return frechet_distance(*gaussian_stats(features_a), *gaussian_stats(features_b))


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``k(x, y) = (x·y / d + 1)³`` for all pairs: ``(m, d), (m, d) -> (m, m)`` (Bińkowski et al. 2018)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def kernel_inception_distance(
    features_a: torch.Tensor | np.ndarray,
    features_b: torch.Tensor | np.ndarray,
    subset_size: int = KID_SUBSET_SIZE,
    num_subsets: int = KID_NUM_SUBSETS,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """Kernel distance (KID, Bińkowski et al. 2018): unbiased MMD² with a cubic polynomial kernel.

    For each of ``num_subsets`` subsets, ``m = subset_size`` rows are drawn without replacement from
    each set and the unbiased estimate of Gretton et al. 2012 ("A Kernel Two-Sample Test")

        MMD² = Σ_{i≠j} k(x_i, x_j) / (m(m-1)) + Σ_{i≠j} k(y_i, y_j) / (m(m-1)) - 2 Σ_{i,j} k(x_i, y_j) / m²

    is computed, as in the authors' reference code and torch-fidelity.

    Args:
        features_a: ``(n_a, d)``.
        features_b: ``(n_b, d)``.
        subset_size: rows per subset, ``2 <= subset_size <= min(n_a, n_b)``.
        num_subsets: how many subsets to average over.
        generator: draws the subsets; None uses a fresh, default-seeded ``torch.Generator``, so the
            result is reproducible either way.

    Returns:
        The mean and the standard deviation of the per-subset estimates. The mean can be slightly
        negative when the two sets come from the same distribution.

    Raises:
        ValueError: mismatched feature widths, or a subset size or count out of range.
    """
    a, b = _as_matrix("features_a", features_a), _as_matrix("features_b", features_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"features_a and features_b must have the same width, got {a.shape[1]} and {b.shape[1]}")
    if not 2 <= subset_size <= min(len(a), len(b)):
        raise ValueError(
            f"subset_size must be in [2, {min(len(a), len(b))}] (the smaller set's size), got {subset_size}"
        )
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be at least 1, got {num_subsets}")
    generator = torch.Generator() if generator is None else generator
    m = subset_size
    estimates = np.empty(num_subsets, dtype=np.float64)
    for s in range(num_subsets):
        x = a[torch.randperm(len(a), generator=generator)[:m].numpy()]  # (m, d)
        y = b[torch.randperm(len(b), generator=generator)[:m].numpy()]  # (m, d)
        k_xx, k_yy, k_xy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))  # off-diagonal
        estimates[s] = within - 2.0 * k_xy.sum() / (m * m)
    return float(estimates.mean()), float(estimates.std())


def default_kid_subset_size(num_images: int) -> int:
    """Rows per KID subset for sets of ``num_images``: ``min(1000, num_images // 2)``, at least 2.

    Half the set (rather than all of it) so that the random subsets differ and their spread means
    something; 1000 at most, as in the reference code.
    """
    return max(2, min(KID_SUBSET_SIZE, num_images // 2))


@dataclass(frozen=True)
class QualityResult:
    """FD and KID between generated and reference features, labelled with the sample counts.

    FD depends on the number of images (it is biased), so a number without its count means little:
    `label` reads ``FD@N`` and `to_dict` always carries ``num_images`` and ``num_reference``.
    """

    fd: float  # Fréchet distance between the Gaussians fitted to the two feature sets
    kid: float  # kernel distance: mean unbiased MMD² over the subsets (can be slightly negative)
    kid_std: float  # standard deviation of the per-subset KID estimates
    num_images: int  # generated images (rows of the first feature set): the N of FD@N
    num_reference: int  # reference images (rows of the second feature set)
    extractor: str  # name of the feature space, e.g. "classifier" or "inception"
    feature_dim: int  # width of the features
    kid_subset_size: int  # rows per KID subset
    kid_num_subsets: int  # KID subsets averaged
    settings: dict[str, Any] = field(default_factory=dict)  # how the images were made (model, sampler, ...)

    @property
    def label(self) -> str:
        """``FD@N``: FD is only comparable between results with the same N."""
        return f"FD@{self.num_images}"

    @property
    def kid_label(self) -> str:
        return f"KID@{self.num_images}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: every field (``settings`` merged in at the top level) plus both labels."""
        fields = {k: v for k, v in self.__dict__.items() if k != "settings"}
        return {**self.settings, **fields, "label": self.label, "kid_label": self.kid_label}


def compare_features(
    features: torch.Tensor | np.ndarray,
    reference: torch.Tensor | np.ndarray,
    extractor: str,
    *,
    kid_subset_size: int | None = None,
    kid_num_subsets: int = KID_NUM_SUBSETS,
    generator: torch.Generator | None = None,
    settings: dict[str, Any] | None = None,
) -> QualityResult:
    """FD and KID of ``features`` (generated images) against ``reference`` (real images).

    Args:
        features: ``(n, d)``, ``n >= 2``.
        reference: ``(m, d)``, ``m >= 2``.
        extractor: the feature space's name, recorded in the result.
        kid_subset_size: rows per KID subset; None means `default_kid_subset_size` of ``min(n, m)``.
        kid_num_subsets: KID subsets to average.
        generator: draws the KID subsets (see `kernel_inception_distance`).
        settings: recorded in the result as they are.

    Raises:
        ValueError: see `gaussian_stats` and `kernel_inception_distance`.
    """
    a, b = _as_matrix("features", features), _as_matrix("reference", reference)
    subset = default_kid_subset_size(min(len(a), len(b))) if kid_subset_size is None else kid_subset_size
    kid, kid_std = kernel_inception_distance(a, b, subset, kid_num_subsets, generator=generator)
    return QualityResult(
        fd=frechet_distance_between(a, b),
        kid=kid,
        kid_std=kid_std,
        num_images=len(a),
        num_reference=len(b),
        extractor=extractor,
        feature_dim=a.shape[1],
        kid_subset_size=subset,
        kid_num_subsets=kid_num_subsets,
        settings=dict(settings or {}),
    )
