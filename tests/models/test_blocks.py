import pytest
import torch
from torch import nn

from diffusion.models.blocks import NCHW_GROUP_NORM_BELOW_CHANNELS, GroupNorm


@pytest.mark.parametrize("channels", [32, NCHW_GROUP_NORM_BELOW_CHANNELS])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_group_norm_equals_torch_in_the_input_layout(channels, dtype):
    torch.manual_seed(0)
    ours, reference = GroupNorm(8, channels), nn.GroupNorm(8, channels)
    with torch.no_grad():
        for p in (ours.weight, ours.bias):
            p.normal_()
    reference.load_state_dict(ours.state_dict())
    ours, reference = ours.to(dtype), reference.to(dtype)
    x = torch.randn(4, channels, 12, 10, dtype=dtype)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = ours(x_cl)
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert out.shape == (4, channels, 12, 10)
        if channels < NCHW_GROUP_NORM_BELOW_CHANNELS and dtype == torch.bfloat16:
            # the detour normalises an NCHW copy: bit for bit the NCHW kernel's result
            assert torch.equal(out, reference(x))
        else:
            assert torch.equal(out, reference(x_cl))  # nn.GroupNorm itself
        assert torch.equal(ours(x), reference(x))  # NCHW input: untouched
