"""Does a model copy its training images? Nearest training neighbours of samples, judged against held-out images.

A sample close to a training image is not by itself a copy: held-out test images, which the model never
saw, are also close to some training image (emoji of one category share shapes and colours). So the test
images' own nearest-training distances are the yardstick, and `memorization_report` gives, in one vector
space (flattened pixels, or a network's features):

- (a) ``below_test_median``: the share of samples closer to the training set than the median test image is
  (about half when samples are as far from the training set as new images are; near 1 when they copy);
- (b) ``near_copies``: the share of samples whose nearest training image is much nearer than the second
  nearest, ``d1 / d2 < threshold``. After Carlini et al. 2023 ("Extracting Training Data from Diffusion
  Models", section 5), who divide the nearest distance by an average over several nearest training images;
  here the second nearest alone. The ratio, not the distance, is the test because a copy is close to *one*
  training image, while a blend of several (or a plain, common image) is about as close to its second
  neighbour as to its first; a small ratio means "this one", whatever the distance's scale in the space.
  Its blind spot: a training image with a near-duplicate (an emoji and its skin-tone variations) has a
  second neighbour almost as near as the first, so a copy of it is not counted here; (a) and (c) still
  show it;
- (c) ``closest``: the samples nearest to the training set, each with its nearest training image.
"""

from dataclasses import dataclass

import torch

NEAR_COPY_RATIO = 1 / 3  # d1 / d2 below this is a near copy (the threshold Carlini et al. use)


def _as_matrix(name: str, vectors: torch.Tensor) -> torch.Tensor:
    """``vectors`` as a float64 ``(n, d)`` tensor; ``ValueError`` unless it is 2-D with a row."""
    vectors = torch.as_tensor(vectors)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise ValueError(f"{name} must have shape (n, d) with n >= 1, got {tuple(vectors.shape)}")
    return vectors.detach().to("cpu", torch.float64)


def nearest_neighbours(
    queries: torch.Tensor, reference: torch.Tensor, k: int = 2, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` rows of ``reference`` nearest to each row of ``queries`` in L2, exactly (no approximate search).

    The neighbours are found with ``|q|² + |r|² - 2 q·r``, a matrix product per batch of queries, in float64;
    their distances are then computed from the differences, so an exact copy is at distance 0.

    Args:
        queries: ``(n, d)``.
        reference: ``(m, d)``.
        k: neighbours per query, ``1 <= k <= m``.
        batch_size: queries per matrix product (memory is ``batch_size * m`` float64).

    Returns:
        ``distances`` float64 ``(n, k)``, ascending along each row, and ``indices`` int64 ``(n, k)`` into
        ``reference`` (ties in any order).

    Raises:
        ValueError: not 2-D, different widths, or ``k`` out of range.
    """
    q, r = _as_matrix("queries", queries), _as_matrix("reference", reference)
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"queries and reference must have the same width, got {q.shape[1]} and {r.shape[1]}")
    if not 1 <= k <= len(r):
        raise ValueError(f"k must be in [1, {len(r)}] (the reference set's size), got {k}")
    r_squared = (r * r).sum(dim=1)  # (m,)
    distances, indices = [], []
    for batch in q.split(batch_size):
        squared = (batch * batch).sum(dim=1, keepdim=True) + r_squared - 2 * batch @ r.T  # (b, m)
        index = squared.topk(k, dim=1, largest=False).indices  # (b, k), nearest first
        # The distances themselves from the differences: the expansion leaves a rounding error of about
        # eps * |q|², which a square root turns into ~1e-6 for what should be an exact copy's 0.
        distances.append((batch[:, None, :] - r[index]).norm(dim=2))  # (b, k, d) -> (b, k)
        indices.append(index)
    return torch.cat(distances), torch.cat(indices)


def copy_ratios(distances: torch.Tensor) -> torch.Tensor:
    """``d1 / d2`` of each row of `nearest_neighbours` distances ``(n, >= 2)``: ``(n,)``, 0 where both are 0
    (an exact copy of a training image that the training set holds twice is still a copy)."""
    d1, d2 = distances[:, 0], distances[:, 1]
    return d1 / d2.clamp_min(torch.finfo(d2.dtype).tiny)  # d2 = 0 means d1 = 0, so 0 / tiny = 0


@dataclass(frozen=True)
class MemorizationReport:
    """Samples against the training set, with held-out test images as the yardstick, in one vector space."""

    below_test_median: float  # (a) share of samples nearer the training set than the test images' median
    near_copies: float  # (b) share of samples with d1 / d2 < threshold
    test_below_median: float  # (a) for the test images themselves (just under 0.5 by construction)
    test_near_copies: float  # (b) for the test images: how often a new image looks like a copy anyway
    test_median: float  # median nearest-training distance of the test images
    threshold: float  # the near-copy ratio
    nearest: torch.Tensor  # (n,) float64: each sample's distance to its nearest training image
    nearest_index: torch.Tensor  # (n,) int64: which training image that is
    ratios: torch.Tensor  # (n,) float64: d1 / d2 of each sample
    closest: list[tuple[int, int, float]]  # (c) (sample, training image, distance), nearest first


def memorization_report(
    samples: torch.Tensor,
    training: torch.Tensor,
    test: torch.Tensor,
    threshold: float = NEAR_COPY_RATIO,
    num_pairs: int = 8,
) -> MemorizationReport:
    """(a), (b) and (c) of the module docstring for ``samples`` against ``training``, with ``test`` as yardstick.

    Args:
        samples: ``(n, d)`` generated images' vectors (flattened pixels or features).
        training: ``(m, d)`` the training images' vectors, ``m >= 2``.
        test: ``(t, d)`` held-out images' vectors, in the same space.
        threshold: the near-copy ratio ``d1 / d2``, in (0, 1].
        num_pairs: how many of the samples nearest to the training set ``closest`` lists (all when fewer).

    Raises:
        ValueError: shapes that do not fit, fewer than 2 training rows, or a threshold or count out of range.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if num_pairs < 0:
        raise ValueError(f"num_pairs must be at least 0, got {num_pairs}")
    if len(training) < 2:
        raise ValueError(f"training must have at least 2 rows (a nearest and a second nearest), got {len(training)}")
    sample_d, sample_i = nearest_neighbours(samples, training, k=2)  # (n, 2) each
    test_d, _ = nearest_neighbours(test, training, k=2)  # (t, 2)
    median = torch.quantile(test_d[:, 0], 0.5).item()  # the mean of the middle two for an even count
    sample_ratios, test_ratios = copy_ratios(sample_d), copy_ratios(test_d)
    order = sample_d[:, 0].argsort(stable=True)[:num_pairs]  # the samples nearest to the training set
    return MemorizationReport(
        below_test_median=(sample_d[:, 0] < median).double().mean().item(),
        near_copies=(sample_ratios < threshold).double().mean().item(),
        test_below_median=(test_d[:, 0] < median).double().mean().item(),
        test_near_copies=(test_ratios < threshold).double().mean().item(),
        test_median=median,
        threshold=threshold,
        nearest=sample_d[:, 0],
        nearest_index=sample_i[:, 0],
        ratios=sample_ratios,
        closest=[(i, sample_i[i, 0].item(), sample_d[i, 0].item()) for i in order.tolist()],
    )
