import math

import pytest
import torch
from diffusers.models.embeddings import get_timestep_embedding

from diffusion.models.embeddings import timestep_embedding


@pytest.mark.parametrize("flip, shift", [(False, 1.0), (True, 0.0), (True, 1.0), (False, 0.0)])
@pytest.mark.parametrize("dim", [32, 33, 128])
def test_timestep_embedding_matches_diffusers(flip, shift, dim):
    t = torch.tensor([0, 1, 17, 500, 999])
    ours = timestep_embedding(t, dim, flip_sin_to_cos=flip, freq_shift=shift)
    theirs = get_timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    assert ours.shape == (5, dim) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_timestep_embedding_closed_form():
    # Column i < dim/2 of the unflipped embedding is sin(t * 10000 ** (-i / (dim/2 - shift))).
    t = torch.tensor([3.0, 250.5])
    emb = timestep_embedding(t, 8, flip_sin_to_cos=False, freq_shift=1.0)
    freqs = torch.tensor([10_000 ** (-i / 3) for i in range(4)])
    expected = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], dim=1)
    torch.testing.assert_close(emb, expected)
    assert emb[0, 0] == pytest.approx(math.sin(3.0), abs=1e-6)  # frequency 1 at i = 0
