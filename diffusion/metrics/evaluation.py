"""Measure a model's samples against real images: FD@N and KID@N in a chosen feature space.

`evaluate` is the library side of ``python -m diffusion.evaluate`` / ``diffusion-evaluate``:

1. load the model folder and the feature extractor (`diffusion.metrics.load_feature_extractor`);
2. draw ``num_reference`` real images from the reference folder by a seeded shuffle (so that a
   folder sorted by class still gives every class), converted to the model's channels and fitted to
   its sample size exactly as `diffusion.data` prepares training images (cover-resize, centre crop);
3. embed them, which also proves that the extractor takes the model's images before any sampling;
4. generate ``num_images`` images (image i from seed ``seed + i``) and embed them;
5. FD and KID (`diffusion.metrics.compare_features`), labelled with both counts.

Layering: this module puts together the pipeline, the data helpers and the metrics (all one layer
down), beside `diffusion.training`; the ``python -m`` entry, `diffusion.evaluate`, sits above the CLI.
"""

import logging
from pathlib import Path

import torch

from ..data import DECODE_ERRORS, find_image_files, fit, load_image, to_tensor, warn_skipped
from ..guidance import RANDOM_CLASSES
from ..image import WHITE
from ..pipeline import DEFAULT_GUIDANCE_SCALE, DiffusionPipeline
from ..rng import seed_list
from .distances import KID_NUM_SUBSETS, QualityResult, compare_features
from .features import FeatureExtractor, load_feature_extractor

logger = logging.getLogger(__name__)


def _check_int(name: str, value: object, minimum: int, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{why}, got {value!r}")
    return value


def load_reference_images(
    folder: str | Path,
    num_images: int,
    channels: int,
    size: tuple[int, int],
    seed: int = 0,
    background: tuple[int, int, int] = WHITE,
) -> torch.Tensor:
    """``num_images`` images drawn from ``folder`` (recursively) by a shuffle seeded with ``seed``.

    Files that do not decode are skipped (with one warning) and the next ones in the shuffle are used.

    Args:
        folder: a folder tree of images (`diffusion.data.find_image_files`).
        num_images: how many to return.
        channels: 1 (grey), 3 (RGB) or 4 (RGBA, alpha kept; images without it are opaque); other modes
            are converted as for training.
        size: (height, width): each image is resized to cover it, then centre-cropped.
        seed: the shuffle's seed.
        background: the RGB colour transparency is composited on at 1 and 3 channels. `evaluate` passes the
            model's (`DiffusionPipeline.input_colour`): white for a model trained on random backgrounds,
            which has no one colour, so give such a model opaque reference images (or train it with
            ``--channels 4``).

    Returns:
        float32 ``(num_images, channels, height, width)`` in [-1, 1].

    Raises:
        FileNotFoundError: ``folder`` is not a folder.
        ValueError: fewer than ``num_images`` (readable) images, or ``channels`` other than 1, 3 or 4.
    """
    folder = Path(folder)
    if channels not in (1, 3, 4):
        raise ValueError(f"reference images can be loaded with 1, 3 or 4 channels, not {channels}")
    if not folder.is_dir():
        raise FileNotFoundError(f"reference folder {folder} not found (give a folder of real images)")
    files = find_image_files(folder)
    if len(files) < num_images:
        raise ValueError(
            f"reference folder {folder} has {len(files)} image files, fewer than the {num_images} asked for; "
            "ask for fewer images or add more"
        )
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
    images, skipped = [], []
    for i in order:
        if len(images) == num_images:
            break
        try:
            image = load_image(files[i], channels, background)
        except DECODE_ERRORS as e:
            skipped.append((files[i], f"{type(e).__name__}: {e}"))
            continue
        images.append(to_tensor(fit(image, size, None)))  # (channels, height, width) in [-1, 1]
    if skipped:
        warn_skipped(skipped, "reference file(s)", folder)
    if len(images) < num_images:
        raise ValueError(
            f"reference folder {folder} has only {len(images)} readable images, fewer than the {num_images} asked for"
        )
    return torch.stack(images)  # (num_images, channels, height, width)


def evaluate(
    model: str | Path | DiffusionPipeline | None,
    reference: str | Path,
    num_images: int,
    *,
    num_inference_steps: int | None = None,
    scheduler: str | None = None,
    extractor: str | FeatureExtractor = "classifier",
    extractor_path: str | Path | None = None,
    num_reference: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    kid_subset_size: int | None = None,
    kid_num_subsets: int = KID_NUM_SUBSETS,
    progress: bool = False,
) -> QualityResult:
    """FD@N and KID@N of ``num_images`` samples of ``model`` against real images from ``reference``.

    Args:
        model: a model folder, None for the shipped Fashion-MNIST model, or a loaded pipeline (used as
            it is: then leave ``device`` and ``dtype`` unset).
        reference: a folder of real images; it must hold at least ``num_reference`` readable ones.
        num_images: N, the number of generated images (>= 2); FD is only comparable at equal N.
        num_inference_steps: sampler steps; None means the model's `DiffusionPipeline.default_steps` (20, or a
            distilled model's own).
        scheduler: a name from `diffusion.schedulers.SCHEDULER_NAMES`; None means the model's own.
        extractor: a registered extractor name (`diffusion.metrics.EXTRACTORS`) or an extractor object.
        extractor_path: the named extractor's weights (see `load_feature_extractor`); None for its default.
        num_reference: real images to compare with (>= 2); None means ``num_images``.
        seed: image i is generated from seed ``seed + i``; the reference shuffle and the KID subsets
            are seeded with it too, so a run is reproducible.
        batch_size: images per forward pass, for sampling and for the extractor.
        device: where to load the model and the extractor (default: the CPU).
        dtype: the UNet's dtype when loading (default: float32); the extractor always runs in float32.
        kid_subset_size: rows per KID subset; None means ``min(1000, min(N, M) // 2)``.
        kid_num_subsets: KID subsets to average.
        progress: show the sampling progress bar.

    Reference images with transparency are composited on the model's background at 1 and 3 channels
    (`DiffusionPipeline.background`; white for random, see `load_reference_images`).
    A 4-channel (RGBA) model's samples and reference images keep their alpha up to the extractor: the
    ImageNet extractors composite them on white before their features (`diffusion.metrics.features`);
    a classifier trained on RGBA images takes the 4 channels as they are.

    A class-conditional model draws each image's class from its seed and is guided at
    `DEFAULT_GUIDANCE_SCALE` (``class_labels="random"``), so that its samples follow the data's classes.

    Returns:
        The `QualityResult`; its ``settings`` record the model, sampler, steps, seed, dtype, device,
        image size, channels, background, extractor and reference folder (and the class sampling, for a
        conditional model).

    Raises:
        FileNotFoundError: a missing model, reference folder or extractor weights.
        ValueError: bad counts, too few reference images, an unknown scheduler or extractor, or an
            extractor that cannot take the model's images.
    """
    num_reference = _check_counts(num_images, num_reference, batch_size, kid_subset_size, kid_num_subsets, seed)
    pipe, model_name = _pipeline(model, device, dtype)
    if isinstance(extractor, str):
        extractor = load_feature_extractor(extractor, extractor_path, pipe.device, batch_size)
    elif extractor_path is not None:
        raise ValueError("extractor_path goes with an extractor name, not with an extractor object")
    sampler = scheduler if scheduler is not None else pipe.scheduler_name()
    steps = pipe.check_steps(num_inference_steps)
    nfe = pipe.num_model_evaluations(steps, sampler)  # an unknown sampler or step count fails now
    channels, size = pipe.unet.config.in_channels, tuple(pipe.unet.config.sample_size)

    # Every check on the user's input happens above or in the next line, before anything is logged, so
    # that a mistake is one line on stderr.
    reference_features = _reference_features(extractor, reference, num_reference, pipe, seed)  # (M, d)
    logger.info("embedded %d reference images from %s at %dx%d", num_reference, reference, *size)
    logger.info("generating %d images (%s, %d steps)", num_images, sampler, steps)
    features, classes = _sample_features(pipe, extractor, num_images, steps, sampler, seed, batch_size, progress)
    settings = {
        "model": model_name,
        "reference": str(reference),
        "scheduler": sampler,
        "steps": steps,
        "nfe": nfe,
        "seed": seed,
        **({"class_labels": classes, "guidance_scale": DEFAULT_GUIDANCE_SCALE} if classes else {}),
        "dtype": str(pipe.dtype).removeprefix("torch."),
        "device": str(pipe.device),
        "image_size": list(size),
        "channels": channels,
        "background": pipe.background,
        "extractor_description": extractor.description,
    }
    return compare_features(
        features,
        reference_features,
        extractor.name,
        kid_subset_size=kid_subset_size,
        kid_num_subsets=kid_num_subsets,
        generator=torch.Generator().manual_seed(seed),
        settings=settings,
    )


def _check_counts(
    num_images: int,
    num_reference: int | None,
    batch_size: int,
    kid_subset_size: int | None,
    kid_num_subsets: int,
    seed: int,
) -> int:
    """Refuse counts `evaluate` cannot work with, before any work; returns ``num_reference``."""
    num_images = _check_int("num_images", num_images, 2, " (FD needs a covariance)")
    num_reference = num_images if num_reference is None else num_reference
    num_reference = _check_int("num_reference", num_reference, 2, " (FD needs a covariance)")
    _check_int("batch_size", batch_size, 1)
    _check_int("kid_num_subsets", kid_num_subsets, 1)
    seed_list(seed, num_images)  # the generated images' seeds
    smaller = min(num_images, num_reference)
    if kid_subset_size is not None and _check_int("kid_subset_size", kid_subset_size, 2) > smaller:
        raise ValueError(f"kid_subset_size must be at most {smaller} (the smaller image count), got {kid_subset_size}")
    return num_reference


def _pipeline(
    model: str | Path | DiffusionPipeline | None, device: str | torch.device | None, dtype: torch.dtype | None
) -> tuple[DiffusionPipeline, str]:
    """The pipeline to measure, loaded unless it is one, and its name in the results."""
    if isinstance(model, DiffusionPipeline):
        if device is not None or dtype is not None:
            raise ValueError("device and dtype apply to loading a model folder; move a loaded pipeline with .to()")
        return model, "<in-memory pipeline>"
    pipe = DiffusionPipeline.from_pretrained(model, device=device, dtype=dtype)
    return pipe, str(model) if model is not None else "shipped: assets/fashion-mnist"


def _reference_features(
    extractor: FeatureExtractor, folder: str | Path, num_reference: int, pipe: DiffusionPipeline, seed: int
) -> torch.Tensor:
    """The features ``(M, d)`` of the reference images, drawn for ``pipe``'s model (its channels, size and
    background), which also proves that the extractor takes the model's images before any sampling."""
    channels, size = pipe.unet.config.in_channels, tuple(pipe.unet.config.sample_size)
    colour = pipe.input_colour  # what transparency is composited on at 1 and 3 channels
    real = load_reference_images(folder, num_reference, channels, size, seed, colour)  # (M, c, h, w) in [-1, 1]
    try:
        return extractor.features(real)  # (M, d)
    except ValueError as e:  # e.g. the shipped 1-channel Fashion-MNIST classifier and an RGB model
        raise ValueError(
            f"{e}: this extractor cannot measure the model's {channels}-channel {size[0]}x{size[1]} images; "
            "pick another extractor ('inception' or 'efficientnet-lite0'), or a classifier trained on this data "
            "(bench/train_classifier.py) as extractor_path"
        ) from None


def _sample_features(
    pipe: DiffusionPipeline,
    extractor: FeatureExtractor,
    num_images: int,
    num_inference_steps: int,
    sampler: str,
    seed: int,
    batch_size: int,
    progress: bool,
) -> tuple[torch.Tensor, str | None]:
    """The features ``(N, d)`` of ``num_images`` samples, and the class labels asked for (None: unconditional)."""
    # A class-conditional model is measured on the data's mix of classes: a class per image, guided.
    classes = RANDOM_CLASSES if pipe.unet.config.num_classes is not None else None
    images = pipe(
        num_images,
        num_inference_steps,
        scheduler=sampler,
        seed=seed,
        class_labels=classes,
        batch_size=batch_size,
        output_type="tensor",
        progress=progress,
    )  # (N, c, h, w) float32 in [0, 1]
    return extractor.features(images * 2 - 1), classes  # (N, d)
