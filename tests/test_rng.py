"""`diffusion.rng`: each image's seed, one generator per image, and Gaussian noise equal to diffusers'."""

import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor as diffusers_randn_tensor

from diffusion.rng import MAX_SEED, generators, randn_tensor, seed_list


def make_generators(per_item: bool) -> torch.Generator | list[torch.Generator]:
    if per_item:
        return [torch.Generator().manual_seed(seed) for seed in (10, 11, 12)]
    return torch.Generator().manual_seed(3)


@pytest.mark.parametrize("per_item", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_randn_tensor_matches_diffusers(dtype, per_item):
    shape = (3, 2, 4, 4)
    expected = diffusers_randn_tensor(shape, generator=make_generators(per_item), dtype=dtype)
    actual = randn_tensor(shape, generator=make_generators(per_item), dtype=dtype)
    assert actual.dtype == dtype
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_per_item_generators_make_noise_independent_of_batch_size():
    batch = randn_tensor((4, 3, 8, 8), generator=[torch.Generator().manual_seed(s) for s in range(4)])
    alone = randn_tensor((1, 3, 8, 8), generator=[torch.Generator().manual_seed(2)])
    torch.testing.assert_close(batch[2:3], alone, rtol=0, atol=0)


def test_randn_tensor_needs_one_generator_per_item():
    with pytest.raises(ValueError, match=r"one generator per batch item \(4\), got 2"):
        randn_tensor((4, 3), generator=[torch.Generator(), torch.Generator()])


def test_an_int_seed_numbers_the_images_from_it_and_a_list_gives_each_its_own():
    assert list(seed_list(5, 3)) == [5, 6, 7]
    assert seed_list([9, 2, 9], 3) == [9, 2, 9]
    assert list(seed_list(MAX_SEED, 1)) == [2**64 - 1]  # the top of torch.Generator.manual_seed's range
    first, again = generators([4])[0], torch.Generator().manual_seed(4)
    assert torch.equal(torch.randn(3, generator=first), torch.randn(3, generator=again))


@pytest.mark.parametrize(
    ("seed", "count", "message"),
    [
        (2**64 - 2, 3, r"^seed must be in \[0, 2\*\*64 - 3\] for 3 images, got 18446744073709551614$"),
        (-1, 1, r"^seed must be in \[0, 2\*\*64 - 1\] for 1 images, got -1$"),
        ([1, 2], 3, r"^got 2 seeds for 3 images; give one seed per image$"),
        ([1, True], 2, r"^seeds must be integers in \[0, 2\*\*64 - 1\], got True$"),
        ("0", 1, r"^seed must be an integer or one integer per image, got '0'$"),
    ],
)
def test_seeds_out_of_range_or_count_are_refused(seed, count, message):
    with pytest.raises(ValueError, match=message):
        seed_list(seed, count)
