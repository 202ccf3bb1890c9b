"""Hostile arguments for the pipeline API (hypothesis): a `ValueError` or `TypeError` naming the argument.

`DiffusionPipeline.from_pretrained()` (the shipped model), sampling and editing (``__call__``), `invert`,
`interpolate`, `make_scheduler` and `to` are called with arguments drawn from their own names plus unknown
ones, each valued from a hostile pool (negative, zero, huge, NaN, inf, wrong types) or a valid one. The
outcome must be a result, or a `ValueError` / `TypeError` / `FileNotFoundError` whose message names one of
the drawn arguments: never another exception from deep inside torch, a hang, or a huge allocation. The
valid values keep an accepted call tiny (one or two images, one or two steps).
"""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from fuzzing import FUZZ as CLI_FUZZ  # tests/ is on sys.path
from fuzzing import MEMORY_HEADROOM, SECONDS_PER_RUN, memory_limit, time_limit
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from diffusion.config import ConfigTypeError
from diffusion.models import UNetConfig
from diffusion.pipeline import DiffusionPipeline
from diffusion.schedulers import DDIMScheduler

FUZZ = settings(CLI_FUZZ, max_examples=300)  # derandomised like the CLI fuzz
NAN = float("nan")
HOSTILE = [
    -1, 0, 10**12, 2**63, 2**64, 1e308, -1e308, NAN, math.inf, -math.inf, 1.5, -0.5, True, None, "", "abc",
    [], [1], (28,), {}, object(), b"x", torch.tensor(NAN), torch.zeros(0), np.int64(3), np.float32(NAN),
]  # fmt: skip
UNKNOWN = {"foo": [1], "num_image": [1], "steps": [2], "negative_prompt": ["x"]}
# Words a message may use for an argument, besides its own name.
SAID_AS = {
    "class_labels": ("class",),
    "mask_image": ("mask",),
    "images": ("image",),
    "num_images": ("images",),
    "num_inference_steps": ("steps",),
    "scheduler": ("sampler",),
    "name": ("scheduler",),
    "path": ("folder", "model"),
    "guidance_scale": ("guidance",),
    "num_frames": ("frames",),
}


def gray(size: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(size).integers(0, 256, (size, size), dtype=np.uint8))


def mask(size: int) -> Image.Image:
    m = np.zeros((size, size), np.uint8)
    m[:, : size // 2] = 255
    return Image.fromarray(m)


IMAGES = [
    gray(28), gray(9), gray(240), [gray(28), gray(28)], [gray(28), gray(56)], torch.rand(1, 1, 28, 28),
    torch.rand(3, 28, 28), torch.full((1, 1, 28, 28), NAN), torch.rand(1, 1, 28, 28) * 2, torch.rand(1, 1, 0, 28),
]  # fmt: skip
LATENT = torch.randn(1, 28, 28)
CALL = {
    "num_images": [1, 2],
    "num_inference_steps": [1, 2, 1001],
    "scheduler": ["ddim", "heun", "ddpm", "dpmsolver++3m-sde", "lms", DDIMScheduler()],
    "eta": [0.0, 0.5],
    "seed": [0, [0], [1, 2], 2**64 - 1, -1, [2**64], "0"],
    "generator": [torch.Generator()],
    "batch_size": [1],
    "size": [(28, 28), (8, 8), (7, 7), (0, 28), (-4, 28), (232, 232), (10**6, 10**6), (28.0, 28), "28x28"],
    "class_labels": ["bag", 0, 9, 10, -1, [0, 1], [[1]], "random", torch.tensor([1]), np.array([1]), 1.5],
    "guidance_scale": [1.5, 0.0],
    "guidance_rescale": [0.0, 0.5, 2.0],
    "image": IMAGES,
    "strength": [0.0, 0.5, 1.0, 1.5],
    "mask_image": [mask(28), mask(8), torch.ones(28, 28), torch.ones(2, 1, 28, 28)],
    "jump_length": [1, 3],
    "resample": [1, 2, 1001],
    "latents": [torch.randn(1, 1, 28, 28), torch.full((1, 1, 28, 28), NAN), np.zeros((1, 1, 28, 28))],
    "output_type": ["pil", "tensor", "numpy", "jpeg"],
    "callback": [None, lambda *_: None, 5],
    "progress": [False, True],
}
INVERT = {
    "images": IMAGES,
    "num_inference_steps": [1, 2, 1001],
    "class_labels": CALL["class_labels"],
    "guidance_scale": CALL["guidance_scale"],
    "fixed_point_iterations": [0, 1, 101],
    "batch_size": [1],
    "progress": [False],
}
INTERPOLATE = {
    "start": [0, 3, 2**64 - 1, LATENT, LATENT[None], torch.full((1, 28, 28), NAN), torch.zeros(1, 28, 28)],
    "end": [1, LATENT, torch.zeros(1, 8, 8), torch.randn(1, 56, 56)],
    "num_frames": [2, 3, 1, 2**20 + 1],
    "num_inference_steps": [1, 2, 1001],
    "scheduler": ["ddim", "ddpm", "unipc", "lms"],
    "eta": [0.0, 0.5],
    "class_labels": ["bag", "random", 10],
    "guidance_scale": [1.5],
    "size": [(28, 28), (56, 56), (7, 7)],
    "output_type": ["tensor", "jpeg"],
    "batch_size": [1],
    "seed": [0],
    "latents": [LATENT],
}
MAKE_SCHEDULER = {
    "name": ["ddim", "euler", "heun", "dpmsolver++", "lms", 5],
    "eta": [0.0, 0.5, 2.0],
    "use_karras_sigmas": [True, False],
    "timestep_spacing": ["leading", "trailing", "spiral"],
    "steps_offset": [0, 1, 10**12],
    "s_churn": [0.0, 1.0],
    "solver_order": [1, 2, 3, 4],
    "num_train_timesteps": [1000, 10**12],
    "prediction_type": ["v_prediction"],
}
TO = {
    "device": ["cpu", "cuda", "cuda:99", "abc", -1, torch.device("cpu")],
    "dtype": [torch.float32, torch.bfloat16, torch.int64, "float16"],
    "memory_format": [torch.channels_last, torch.contiguous_format, "nhwc"],
}
FROM_PRETRAINED = {
    "path": [None, "{tmp}/missing", "{tmp}/file.txt", "{tmp}", 5, b"x"],
    "device": TO["device"],
    "dtype": TO["dtype"],
}


@pytest.fixture(scope="module")
def pipe() -> DiffusionPipeline:
    return DiffusionPipeline.from_pretrained()


def arguments(pools: dict[str, list], unknown: bool = True) -> st.SearchStrategy[dict]:
    """One to four arguments of ``pools`` (and now and then an unknown name), each valid or hostile."""

    def value(name: str) -> st.SearchStrategy:
        return st.one_of(st.sampled_from(pools.get(name) or UNKNOWN[name]), st.sampled_from(HOSTILE))

    names = st.lists(st.sampled_from(sorted(pools)), min_size=1, max_size=4, unique=True)
    if unknown:
        stray = st.sampled_from(sorted(UNKNOWN)).map(lambda name: [name])
        names = st.tuples(names, st.integers(0, 9).flatmap(lambda i: stray if i == 0 else st.just([]))).map(
            lambda t: t[0] + t[1]
        )
    return names.flatmap(lambda chosen: st.fixed_dictionaries({name: value(name) for name in chosen}))


def check(call, drawn: dict) -> None:
    """``call()`` returns, or raises an input error whose message names one of the ``drawn`` arguments."""
    try:
        with time_limit(SECONDS_PER_RUN), memory_limit(MEMORY_HEADROOM):
            call()
    except (ValueError, TypeError, FileNotFoundError) as e:
        message = str(e)
        assert "\n" not in message.strip(), (drawn, message)
        words = [word for name in drawn for word in (name, name.replace("_", " "), *SAID_AS.get(name, ()))]
        assert any(word in message for word in words), (drawn, f"{type(e).__name__}: {message}")


@FUZZ
@given(drawn=arguments(CALL))
def test_sampling_and_editing_arguments(pipe, drawn):
    check(lambda: pipe(**({"num_images": 1, "num_inference_steps": 2} | drawn)), drawn)


@FUZZ
@given(drawn=arguments(INVERT))
def test_inversion_arguments(pipe, drawn):
    check(lambda: pipe.invert(**({"images": gray(28), "num_inference_steps": 2} | drawn)), drawn)


@FUZZ
@given(drawn=arguments(INTERPOLATE))
def test_interpolation_arguments(pipe, drawn):
    base = {"start": 0, "end": 1, "num_frames": 2, "num_inference_steps": 2}
    check(lambda: pipe.interpolate(**(base | drawn)), drawn)


@FUZZ
@given(drawn=arguments(MAKE_SCHEDULER))
def test_scheduler_arguments(pipe, drawn):
    def call():
        scheduler = pipe.make_scheduler(**({"name": "ddim"} | drawn))
        scheduler.set_timesteps(2)

    check(call, drawn)


@FUZZ
@given(drawn=arguments(TO, unknown=False))
def test_device_and_dtype_arguments(pipe, drawn):
    try:
        check(lambda: pipe.to(**drawn), drawn)
    finally:
        pipe.to("cpu", torch.float32, memory_format=torch.contiguous_format)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("fuzz-folders")
    (tmp / "file.txt").write_text("not a model")
    return tmp


@settings(FUZZ, max_examples=60)
@given(drawn=arguments(FROM_PRETRAINED, unknown=False))
def test_loading_arguments(folders, drawn):
    drawn = {k: v.replace("{tmp}", str(folders)) if isinstance(v, str) else v for k, v in drawn.items()}
    check(lambda: DiffusionPipeline.from_pretrained(**drawn), drawn)


# ----- regressions: each bug the fuzzing found, with its message -----

WHITE = Image.fromarray(np.full((28, 28), 255, np.uint8))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        # TypeError: iteration over a 0-d tensor; '0' worked as the digits of a list; 2**64: torch's "Overflow when
        # unpacking long long"; -1 silently meant 2**64 - 1
        ({"seed": torch.tensor(NAN)}, ValueError, "seed must be an integer or one integer per image, got nan"),
        ({"seed": "0"}, ValueError, "seed must be an integer or one integer per image, got '0'"),
        ({"seed": 2**64}, ValueError, "seed must be in [0, 2**64 - 1] for 1 images, got 18446744073709551616"),
        ({"seed": -1}, ValueError, "seed must be in [0, 2**64 - 1] for 1 images, got -1"),
        ({"seed": [2**64]}, ValueError, "seeds must be integers in [0, 2**64 - 1], got 18446744073709551616"),
        # TypeError: '<=' not supported between instances of 'int' and 'NoneType'
        ({"guidance_rescale": None}, ValueError, "guidance_rescale must be a number, got None"),
        # RuntimeError: Boolean value of Tensor with no values is ambiguous
        ({"progress": torch.tensor([])}, ValueError, "progress must be True or False, got tensor([])"),
        # RuntimeError: min(): Expected reduction dim to be specified
        ({"image": torch.rand(1, 1, 0, 28)}, ValueError, "image tensor is empty: shape (1, 1, 0, 28)"),
        # RuntimeErrors from the first convolution, torch.randn and the allocator
        ({"size": (0, 28)}, ValueError, "size must have positive sides, got 0x28"),
        ({"size": (-4, 28)}, ValueError, "size must have positive sides, got -4x28"),
        ({"size": ("a", 28)}, ValueError, "size must be (height, width) in pixels, got ('a', 28)"),
        (
            {"size": (10**6, 10**6)},
            ValueError,
            "size is 1000000x1000000, larger than this model can sample: at most 224x224 (8x the 28x28 it was trained "
            "at, 4096 at most); resize it",
        ),
        # hangs: 10**12 seeds and labels, or one forward pass of 2**20 images
        (
            {"num_images": 10**12},
            ValueError,
            "num_images must be at most 1048576 per call, got 1000000000000; make several calls",
        ),
        (
            {"num_images": 2**20},
            ValueError,
            "a forward pass of 1048576 images of 28x28 holds 98 GiB per activation at 32 channels, over the 32 GiB "
            "limit: give a batch_size (None runs all 1048576 images at once)",
        ),
        (
            {"num_images": 2**20, "size": (224, 224), "batch_size": 1},
            ValueError,
            "num_images=1048576 images of 1x224x224 are 196 GiB of float32, more than this machine's "
            "24 GiB of memory; make several calls",  # the test pins the machine's memory (see the test)
        ),
        # NaN images, silently
        (
            {"latents": torch.full((1, 1, 28, 28), NAN)},
            ValueError,
            "latents must be finite; they hold NaN or infinite values",
        ),
        # "expected one generator per batch item (1), got 3" (the letters of 'abc')
        ({"generator": "abc"}, ValueError, "generator must be a torch.Generator, got str"),
        # TypeError: 'int' object is not callable, after the first step
        ({"callback": 5}, ValueError, "callback must be callable, got 5"),
        # TypeError: 'float' object is not iterable
        (
            {"class_labels": 1.5},
            ValueError,
            "class_labels must be a class name or id, a list of them, or a tensor, got 1.5",
        ),
        # "eta=inf is too large at timestep 999", from inside the loop
        ({"scheduler": "ddim", "eta": math.inf}, ValueError, "eta must be finite, got inf"),
        # MemoryError: a RePaint schedule of 10**12 runs
        (
            {"image": gray(28), "mask_image": WHITE, "resample": 10**12},
            ValueError,
            "resample must be at most 1000, got 1000000000000",
        ),
        # silently ignored without a mask
        ({"jump_length": 0}, ValueError, "jump_length and resample must be positive integers, got 0, 1"),
        (
            {"jump_length": 3},
            ValueError,
            "resample and jump_length are RePaint settings for inpainting: give mask_image too",
        ),
    ],
)
def test_sampling_regressions(pipe, kwargs, error, message, monkeypatch):
    # The result-size limit is the machine's memory: pin it, so that no machine answers otherwise.
    monkeypatch.setattr("diffusion.arguments.MAX_OUTPUT_ELEMENTS", 24 * 2**30 // 4)
    with pytest.raises(error) as caught:
        pipe(**({"num_images": 1, "num_inference_steps": 1} | kwargs))
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "call, error, message",
    [
        # OverflowError: Python int too large to convert to C long
        (
            lambda pipe: pipe.make_scheduler("ddim", steps_offset=2**63, timestep_spacing="leading"),
            ValueError,
            "steps_offset must be in [0, 999], got 9223372036854775808",
        ),
        # RuntimeError: DefaultCPUAllocator: can't allocate memory (8 TB)
        (
            lambda pipe: pipe.make_scheduler("ddim", num_train_timesteps=10**12),
            ValueError,
            "num_train_timesteps is part of the model's noise schedule, which make_scheduler keeps; override sampler "
            "settings only (eta, use_karras_sigmas, timestep_spacing, ...)",
        ),
        # TypeError: '>=' not supported between instances of 'str' and 'int'
        (
            lambda pipe: pipe.make_scheduler("ddim", eta="abc"),
            TypeError,
            "the ddim scheduler's eta must be a finite number, got 'abc'",
        ),
        # "eta=inf is too large at timestep 999", from inside the sampling loop
        (
            lambda pipe: pipe.make_scheduler("ddim", eta=math.inf),
            ValueError,
            "the ddim scheduler's eta must be a finite number, got inf",
        ),
        # hangs
        (
            lambda pipe: pipe.invert(gray(28), 2, fixed_point_iterations=10**12),
            ValueError,
            "fixed_point_iterations must be at most 100, got 1000000000000",
        ),
        (
            lambda pipe: pipe.interpolate(0, 1, num_frames=10**12),
            ValueError,
            "num_frames must be at most 1048576 per call, got 1000000000000; make several calls",
        ),
        (
            lambda pipe: pipe.random_class_labels(10**12, 0),
            ValueError,
            "num_images must be at most 1048576 per call, got 1000000000000; make several calls",
        ),
        # -1 silently meant 2**64 - 1
        (
            lambda pipe: pipe.interpolate(0, -1, num_frames=2),
            ValueError,
            "end seed -1: seeds must be integers in [0, 2**64 - 1], got -1",
        ),
        # RuntimeError from torch.device
        (
            lambda pipe: pipe.to("abc"),
            ValueError,
            "device must be a torch.device or a name such as 'cpu' or 'cuda:0', got 'abc'",
        ),
        # "nn.Module.to only accepts floating point or complex dtypes", a TypeError that did not name the argument
        (
            lambda pipe: pipe.to(dtype=torch.int64),
            ValueError,
            "dtype must be a floating-point torch.dtype such as torch.bfloat16, got torch.int64",
        ),
        # TypeError: expected str, bytes or os.PathLike object, not int
        (
            lambda pipe: DiffusionPipeline.from_pretrained(5),
            ValueError,
            "path must be a folder name (str or os.PathLike) or None, got int",
        ),
        (
            lambda pipe: DiffusionPipeline.from_pretrained(device="abc"),
            ValueError,
            "device must be a torch.device or a name such as 'cpu' or 'cuda:0', got 'abc'",
        ),
    ],
)
def test_api_regressions(pipe, call, error, message):
    with pytest.raises(error) as caught:
        call(pipe)
    assert str(caught.value) == message


def test_a_missing_cuda_device_is_named(pipe):
    # RuntimeError: Found no NVIDIA driver (or an invalid device ordinal on a GPU machine)
    with pytest.raises(ValueError) as caught:
        pipe.to("cuda:99")
    assert (
        str(caught.value)
        == f"device cuda:99 is not available: this machine has {torch.cuda.device_count()} CUDA devices"
    )


def test_interpolating_from_a_zero_latent_gives_finite_frames(pipe):
    # slerp took the angle to a zero tensor as acos(NaN): every middle frame was NaN
    frames = pipe.interpolate(torch.zeros(1, 28, 28), LATENT, num_frames=3, num_inference_steps=1, output_type="tensor")
    assert torch.isfinite(frames).all()


@pytest.mark.parametrize(
    "fields, message",
    [
        # TypeError: 'int' object is not iterable, which the commands showed as a traceback
        ({"channel_mult": 2}, "channel_mult must be a tuple of integers, got 2"),
        # TypeError: '<=' not supported between instances of 'float' and 'str'
        ({"dropout": "0.1"}, "dropout must be a finite number, got '0.1'"),
    ],
)
def test_wrong_types_in_a_unet_config_are_input_errors(fields, message):
    with pytest.raises(ConfigTypeError) as caught:
        UNetConfig.from_dict(fields)
    assert isinstance(caught.value, ValueError) and str(caught.value) == message
