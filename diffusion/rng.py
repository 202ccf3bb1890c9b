"""The random numbers of sampling: each image's seed, and Gaussian noise drawn from per-image generators.

Image i of a call with seed s is drawn from its own ``torch.Generator`` seeded with s + i, so an image
does not depend on the batch size or on its place in a batch (diffusers draws the same numbers).
"""

import numbers
from collections.abc import Sequence

import numpy as np
import torch

Generators = torch.Generator | Sequence[torch.Generator] | None


MAX_SEED = 2**64 - 1  # seeds are in [0, 2**64 - 1], the range of torch.Generator.manual_seed


def seed_list(seed: object, num_images: int) -> Sequence[int]:
    """The seed of each image: ``seed + i`` for an int, else the given sequence, one per image.

    Raises:
        ValueError: for seeds that are not integers in [0, `MAX_SEED`], or a count other than ``num_images``.
    """
    if isinstance(seed, torch.Tensor | np.ndarray):
        seed = seed.reshape(-1).tolist() if seed.ndim else seed.item()
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        seeds: Sequence = range(int(seed), int(seed) + num_images)
    elif isinstance(seed, Sequence) and not isinstance(seed, str | bytes):
        seeds = list(seed)
    else:
        raise ValueError(f"seed must be an integer or one integer per image, got {seed!r}")
    if len(seeds) != num_images:
        raise ValueError(f"got {len(seeds)} seeds for {num_images} images; give one seed per image")
    if isinstance(seeds, range):
        if seeds.start < 0 or seeds.stop - 1 > MAX_SEED:
            raise ValueError(f"seed must be in [0, 2**64 - {num_images}] for {num_images} images, got {seed}")
        return seeds
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or not 0 <= s <= MAX_SEED:
            raise ValueError(f"seeds must be integers in [0, 2**64 - 1], got {s!r}")
    return [int(s) for s in seeds]


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per seed, for `randn_tensor`."""
    return [torch.Generator().manual_seed(s) for s in seeds]


def randn_tensor(
    shape: Sequence[int],
    generator: Generators = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Gaussian noise of ``shape`` (b, ...) on ``device`` (default CPU), equal bit for bit to diffusers'
    `randn_tensor`: item i drawn from generator i alone when given one generator per item."""
    shape = tuple(shape)
    device = torch.device("cpu") if device is None else torch.device(device)
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    if isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)
    per_item = list(generator)
    if len(per_item) != shape[0]:
        raise ValueError(f"expected one generator per batch item ({shape[0]}), got {len(per_item)}")
    items = [torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype) for g in per_item]
    return torch.cat([item.to(device) for item in items])  # (b, ...)
