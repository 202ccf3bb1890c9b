"""The data order: a pure function of (seed, global sample position), so a resume replays it exactly.

Epoch ``e`` is a permutation of the dataset drawn from ``(seed, e)``. The stream of samples is the
concatenation of the epochs; optimiser step ``s`` takes global positions ``[s*B, (s+1)*B)``, split into
``grad_accum`` micro-batches and, inside each, into one contiguous share per process. No sampler state
needs saving: starting at step ``s`` is enough.
"""

import torch
from torch.utils.data import Dataset, Sampler

from ..data import Batch, TrainingImages


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields this process's micro-batches of ``(index, augmentation_seed)`` keys, step by step."""

    def __init__(
        self,
        dataset_size: int,
        *,
        batch_size: int,
        grad_accum: int,
        rank: int,
        world_size: int,
        seed: int,
        start_step: int,
        end_step: int,
    ) -> None:
        # `config.model_config` refuses a batch that the processes and micro-steps cannot share evenly.
        assert batch_size % (grad_accum * world_size) == 0, (batch_size, grad_accum, world_size)
        self.n, self.batch_size, self.grad_accum = dataset_size, batch_size, grad_accum
        self.rank, self.seed = rank, seed
        self.per_process = batch_size // (grad_accum * world_size)
        self.start_step, self.end_step = start_step, end_step
        self._perms: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return (self.end_step - self.start_step) * self.grad_accum

    def permutation(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            rng = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=rng).tolist()}  # keep one epoch
        return self._perms[epoch]

    def key(self, position: int) -> tuple[int, int]:
        """The dataset index and augmentation seed at a global sample position."""
        epoch, j = divmod(position, self.n)
        return self.permutation(epoch)[j], (self.seed * 2**40 + position) % 2**63

    def __iter__(self):
        micro = self.batch_size // self.grad_accum
        for step in range(self.start_step, self.end_step):
            for m in range(self.grad_accum):
                first = step * self.batch_size + m * micro + self.rank * self.per_process
                yield [self.key(p) for p in range(first, first + self.per_process)]


class Batches(Dataset):
    """``images`` indexed by a micro-batch of keys, as `StepBatchSampler` yields them: ``batches[keys]``
    is ``images.batch(keys)``, so that a data-loader worker makes whole batches."""

    def __init__(self, images: TrainingImages) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, keys: list[tuple[int, int]]) -> Batch:
        return self.images.batch(keys)
