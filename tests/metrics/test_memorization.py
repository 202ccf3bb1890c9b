import math

import pytest
import torch

from diffusion.metrics.memorization import (
    NEAR_COPY_RATIO,
    copy_ratios,
    memorization_report,
    nearest_neighbours,
)


def test_nearest_neighbours_on_a_line():
    reference = torch.tensor([[0.0, 0.0], [3.0, 0.0], [10.0, 0.0], [0.0, 4.0]])
    queries = torch.tensor([[1.0, 0.0], [3.0, 4.0], [10.0, 0.0]])
    distances, indices = nearest_neighbours(queries, reference, k=2)
    # (1, 0): 1 from (0, 0), 2 from (3, 0); (3, 4): 3 from (0, 4), 4 from (3, 0); (10, 0): itself, then 7
    torch.testing.assert_close(distances, torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 7.0]], dtype=torch.float64))
    assert indices.tolist() == [[0, 1], [3, 1], [2, 1]]
    assert distances.dtype == torch.float64 and indices.dtype == torch.int64


@pytest.mark.parametrize("width", [3072, 1280])
@pytest.mark.parametrize("batch_size", [1, 7, 256])
def test_nearest_neighbours_match_brute_force(width, batch_size):
    generator = torch.Generator().manual_seed(width)
    queries, reference = torch.rand(20, width, generator=generator), torch.rand(50, width, generator=generator)
    distances, indices = nearest_neighbours(queries, reference, k=3, batch_size=batch_size)
    every = torch.cdist(queries.double(), reference.double())  # (20, 50), the oracle
    expected, expected_indices = every.sort(dim=1)
    torch.testing.assert_close(distances, expected[:, :3], rtol=0, atol=1e-9)
    assert torch.equal(indices, expected_indices[:, :3])  # random vectors: no ties


def test_an_exact_copy_has_distance_zero_in_pixel_space():
    reference = torch.rand(30, 3072, generator=torch.Generator().manual_seed(0))
    distances, indices = nearest_neighbours(reference[[4, 17]], reference, k=2)
    assert distances[:, 0].tolist() == [0.0, 0.0]  # exact, despite |q|² + |r|² - 2 q·r of about 2000
    assert indices[:, 0].tolist() == [4, 17]


def test_k_larger_than_the_reference_set_is_refused():
    with pytest.raises(ValueError, match=r"k must be in \[1, 3\] \(the reference set's size\), got 4"):
        nearest_neighbours(torch.zeros(2, 5), torch.zeros(3, 5), k=4)
    with pytest.raises(ValueError, match="k must be in"):
        nearest_neighbours(torch.zeros(2, 5), torch.zeros(3, 5), k=0)


@pytest.mark.parametrize(
    ("queries", "reference", "message"),
    [
        (torch.zeros(2, 5), torch.zeros(3, 4), "same width, got 5 and 4"),
        (torch.zeros(5), torch.zeros(3, 5), r"queries must have shape \(n, d\) with n >= 1, got \(5,\)"),
        (torch.zeros(2, 5), torch.zeros(0, 5), r"reference must have shape \(n, d\) with n >= 1, got \(0, 5\)"),
    ],
)
def test_shapes_that_do_not_fit_are_refused(queries, reference, message):
    with pytest.raises(ValueError, match=message):
        nearest_neighbours(queries, reference)


def test_copy_ratios():
    distances = torch.tensor([[1.0, 4.0], [0.0, 2.0], [0.0, 0.0], [3.0, 3.0]], dtype=torch.float64)
    assert copy_ratios(distances).tolist() == [0.25, 0.0, 0.0, 1.0]  # a duplicated copy (0, 0) is a copy


def designed_example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training images on the x axis at 0, 10, 20, 30; test images 4, 6 and 8 above 0, 10, 20 (median 6; d1 / d2
    = d / sqrt(100 + d²): 0.371, 0.514, 0.625, none a copy). Samples: an exact copy of 20; a point 1 from 30
    (ratio 1 / sqrt(101) < 1/3); a blend 4.5 from 0 and 5.5 from 10 (close, ratio 9/11: no copy); a point 7
    above 10 (ratio 7 / sqrt(149))."""
    training = torch.tensor([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0], [30.0, 0.0]])
    test = torch.tensor([[0.0, 4.0], [10.0, 6.0], [20.0, 8.0]])
    samples = torch.tensor([[20.0, 0.0], [30.0, 1.0], [4.5, 0.0], [10.0, 7.0]])
    return samples, training, test


def test_memorization_report_on_a_designed_example():
    report = memorization_report(*designed_example(), num_pairs=3)
    assert report.test_median == 6.0
    assert report.below_test_median == 0.75  # the copy (0), the point 1 from 30 and the blend (4.5); not 7
    assert report.near_copies == 0.5  # the copy and the point 1 from 30, not the blend
    assert report.test_below_median == 1 / 3  # only the test image 4 away is strictly below the median 6
    assert report.test_near_copies == 0.0
    assert report.threshold == NEAR_COPY_RATIO
    assert report.nearest_index.tolist() == [2, 3, 0, 1]
    torch.testing.assert_close(report.nearest, torch.tensor([0.0, 1.0, 4.5, 7.0], dtype=torch.float64))
    torch.testing.assert_close(
        report.ratios, torch.tensor([0.0, 1 / math.sqrt(101), 9 / 11, 7 / math.sqrt(149)], dtype=torch.float64)
    )
    assert report.closest == [(0, 2, 0.0), (1, 3, 1.0), (2, 0, 4.5)]


def test_memorization_report_with_a_lower_threshold_counts_fewer_copies():
    report = memorization_report(*designed_example(), threshold=0.05)
    assert report.near_copies == 0.25  # only the exact copy: 1 / sqrt(101) = 0.0995 > 0.05
    assert len(report.closest) == 4  # num_pairs 8, but only 4 samples


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 0.0}, r"threshold must be in \(0, 1\], got 0.0"),
        ({"threshold": 1.5}, r"threshold must be in \(0, 1\], got 1.5"),
        ({"num_pairs": -1}, "num_pairs must be at least 0, got -1"),
    ],
)
def test_memorization_report_refuses_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        memorization_report(*designed_example(), **kwargs)


def test_memorization_report_needs_two_training_rows():
    with pytest.raises(ValueError, match="training must have at least 2 rows"):
        memorization_report(torch.zeros(3, 2), torch.zeros(1, 2), torch.zeros(3, 2))
