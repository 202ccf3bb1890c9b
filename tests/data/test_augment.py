"""`diffusion.data.augment`: the colour transparency is composited on, a pure function of the item's seed, and
the conversions a source accepts. (The crop and flip are tested through the batches: tests/data/test_images.py.)"""

import pytest
import torch

from diffusion.data import BACKGROUNDS, augmentation, background_colour, check_conversion

SEEDS = range(16)


@pytest.mark.parametrize(("background", "colour"), [("white", (255, 255, 255)), ("black", (0, 0, 0))])
def test_a_named_background_is_its_colour_whatever_the_seed(background, colour):
    assert BACKGROUNDS[background] == colour
    assert {background_colour(background, seed) for seed in (*SEEDS, 2**40)} == {colour}


def test_a_random_background_comes_after_the_crop_and_flip_from_the_same_seeded_generator():
    for seed in SEEDS:
        generator = torch.Generator().manual_seed(seed)
        fy, fx, flip = torch.rand(3, generator=generator).tolist()
        assert augmentation(seed) == ((fy, fx), flip < 0.5)  # the crop and flip draws are unchanged
        colour = tuple(torch.randint(0, 256, (3,), generator=generator).tolist())  # the next draws
        assert background_colour("random", seed) == colour


def test_a_random_background_is_the_same_for_a_seed_and_differs_between_seeds():
    # Recorded from torch's CPU generator (Mersenne Twister), whose stream for a seed does not change.
    assert [background_colour("random", seed) for seed in range(4)] == [
        (192, 67, 251),
        (72, 255, 137),
        (72, 22, 43),
        (131, 184, 200),
    ]
    assert background_colour("random", 1) == background_colour("random", 1)
    assert len({background_colour("random", seed) for seed in SEEDS}) == len(SEEDS)


@pytest.mark.parametrize(
    ("channels", "background", "message"),
    [
        (2, "white", "channels must be 1, 3 or 4, got 2"),
        (3, "grey", "background must be white, black or random, got 'grey'"),
    ],
)
def test_other_channels_or_backgrounds_are_refused(channels, background, message):
    with pytest.raises(ValueError) as refused:
        check_conversion(channels, background)
    assert str(refused.value) == message
