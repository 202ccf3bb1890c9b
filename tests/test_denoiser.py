"""The denoiser: the UNet's dtype and memory format, classifier-free guidance in one batched forward, ε̂."""

import math

import torch

from diffusion.schedulers import get_scheduler


def forwards(unet):
    """The input batches the UNet sees, recorded by a forward pre-hook; remove the handle after use."""
    batches = []
    handle = unet.register_forward_pre_hook(lambda module, args: batches.append((args[0].shape[0], args[0].dtype)))
    return batches, handle


def test_guidance_is_one_forward_of_both_branches_extrapolated(make_tiny_pipeline):
    pipe = make_tiny_pipeline(("a", "b", "c"))
    x, t, labels = torch.randn(2, 1, 8, 8), torch.tensor(500), torch.tensor([0, 2])
    with torch.no_grad():
        cond = pipe.unet(x, t.expand(2), labels)
        uncond = pipe.unet(x, t.expand(2), torch.full((2,), 3))  # the null class is num_classes
        batches, handle = forwards(pipe.unet)
        guided = pipe.denoiser(2.5)(x, t, labels)
        handle.remove()
        torch.testing.assert_close(guided, uncond + 2.5 * (cond - uncond), rtol=0, atol=1e-5)
        assert batches == [(4, torch.float32)]  # both branches, one forward
        assert torch.equal(pipe.denoiser(1.0)(x, t, labels), cond)
        assert torch.equal(pipe.denoiser()(x, t, labels), cond)  # no scale: the conditional branch alone
        assert torch.equal(pipe.denoiser(0.0)(x, t, labels), pipe.unet(x, t.expand(2)))
        assert torch.equal(pipe.denoiser()(x, t, None), pipe.unet(x, t.expand(2)))


def test_inputs_take_the_unets_dtype_and_outputs_are_float32(make_tiny_pipeline):
    pipe = make_tiny_pipeline().to(torch.bfloat16)
    batches, handle = forwards(pipe.unet)
    with torch.no_grad():
        out = pipe.denoiser()(torch.randn(3, 1, 8, 8), torch.tensor(10), None)
    handle.remove()
    assert batches == [(3, torch.bfloat16)] and out.dtype == torch.float32 and out.shape == (3, 1, 8, 8)


def test_epsilon_converts_a_v_prediction(make_tiny_pipeline):
    pipe = make_tiny_pipeline()
    schedule = get_scheduler("ddim", {"prediction_type": "v_prediction"}).schedule
    x, t = torch.randn(2, 1, 8, 8), 700
    with torch.no_grad():
        v = pipe.unet(x, torch.tensor(t).expand(2))
        eps = pipe.denoiser().epsilon(x, t, None, schedule)
    a = schedule.alphas_cumprod[t].item()
    torch.testing.assert_close(eps, math.sqrt(a) * v + math.sqrt(1 - a) * x)  # Salimans & Ho 2022, sec. 4


def test_inputs_take_the_unets_memory_format_on_both_paths(make_tiny_pipeline):
    pipe = make_tiny_pipeline(("a", "b")).to(memory_format=torch.channels_last)
    layouts = []
    handle = pipe.unet.register_forward_pre_hook(
        lambda module, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    x, t, labels = torch.randn(2, 1, 8, 8), torch.tensor(10), torch.tensor([0, 1])
    with torch.no_grad():
        pipe.denoiser()(x, t, None)  # one branch
        pipe.denoiser(2.0)(x, t, labels)  # both branches, concatenated
    handle.remove()
    assert layouts == [True, True]


def test_a_guidance_embedded_unet_is_guided_in_one_pass_with_w_as_its_input(make_tiny_pipeline):
    pipe = make_tiny_pipeline(("a", "b", "c"), guidance_embedding=True)
    torch.nn.init.normal_(pipe.unet.guidance_embed.linear_2.weight, std=0.5)  # so that w changes the output
    x, t, labels = torch.randn(2, 1, 8, 8), torch.tensor(500), torch.tensor([0, 2])
    with torch.no_grad():
        batches, handle = forwards(pipe.unet)
        guided = pipe.denoiser(2.5)(x, t, labels)
        handle.remove()
        assert batches == [(2, torch.float32)]  # one branch: no null-class half
        assert torch.equal(guided, pipe.unet(x, t.expand(2), labels, guidance_scale=2.5))
        assert (guided - pipe.unet(x, t.expand(2), labels)).abs().max() > 1e-3
        assert torch.equal(pipe.denoiser(1.0)(x, t, labels), pipe.unet(x, t.expand(2), labels))
        assert torch.equal(pipe.denoiser(0.0)(x, t, labels), pipe.unet(x, t.expand(2)))  # the null class
        assert torch.equal(pipe.denoiser(2.5)(x, t, None), pipe.unet(x, t.expand(2)))  # no labels: no w
    assert pipe.denoiser().guidance_embedded and not make_tiny_pipeline(("a",)).denoiser().guidance_embedded
