"""Classifier-free guidance: one class-conditional model, two predictions, extrapolated.

Ho & Salimans 2022 ("Classifier-Free Diffusion Guidance") train one model on labels that are
dropped to a null class with probability p (see `diffusion.training.loss.drop_labels`), then
sample with ε̃ = ε̂(x, ∅) + w·(ε̂(x, c) - ε̂(x, ∅)): w = 0 is the unconditional model, w = 1 the
conditional one, w > 1 trades diversity for fidelity to the class. The paper writes the same rule
with weight w' = w - 1 (eq. 6). Being linear, it applies alike to ε, v and x̂_0 predictions, and
so to every sampler. This module also resolves class labels and checks guidance arguments.
"""

import math
import numbers
import re
from collections.abc import Sequence

import numpy as np
import torch


def classifier_free_guidance(
    uncond: torch.Tensor, cond: torch.Tensor, scale: float, rescale: float = 0.0
) -> torch.Tensor:
    """uncond + w·(cond - uncond) for ``(b, c, h, w)`` branches, rescaled by φ = ``rescale``; float32."""
    uncond, cond = uncond.float(), cond.float()
    guided = uncond + scale * (cond - uncond)
    if rescale == 0:
        return guided
    # Guidance rescale (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
    # sec. 3.4): a large w inflates the prediction's standard deviation, so it is scaled back to the
    # conditional one's, per image, and mixed with the unscaled prediction by φ.
    dims = tuple(range(1, cond.ndim))
    std_cond = cond.std(dim=dims, keepdim=True)  # (b, 1, 1, 1)
    std_guided = guided.std(dim=dims, keepdim=True)  # (b, 1, 1, 1)
    rescaled = guided * (std_cond / std_guided)  # eq. 15
    return rescale * rescaled + (1 - rescale) * guided  # eq. 16


# `class_labels` value that draws a class per image (uniformly, from the image's seed).
RANDOM_CLASSES = "random"


def class_label_tensor(
    class_labels: int | str | Sequence[int | str] | torch.Tensor | None,
    num_images: int,
    num_classes: int | None,
    class_names: Sequence[str] = (),
) -> torch.Tensor | None:
    """Class labels as ``(num_images,)`` int64 ids: names of ``class_names`` or ids, one or one per image.

    Raises:
        ValueError: for an unconditional model (``num_classes`` None), an unknown class (the known ones
            are listed), or a count that is neither 1 nor ``num_images``.
    """
    if class_labels is None:
        return None
    if num_classes is None:
        raise ValueError("class labels were given, but this model is unconditional (train with --class-cond)")
    if isinstance(class_labels, torch.Tensor | np.ndarray):
        class_labels = class_labels.reshape(-1).tolist()
    single = isinstance(class_labels, str | numbers.Integral)
    if not single and not isinstance(class_labels, Sequence):
        raise ValueError(f"class_labels must be a class name or id, a list of them, or a tensor, got {class_labels!r}")
    items = [class_labels] if single else list(class_labels)
    if len(items) == 1:
        items *= num_images
    if len(items) != num_images:
        raise ValueError(f"got {len(items)} class labels for {num_images} images; give one, or one per image")
    return torch.tensor([_class_id(item, num_classes, list(class_names)) for item in items], dtype=torch.long)


def class_slug(name: str) -> str:
    """A class name as a command line takes it unquoted: ``Food & Drink`` -> ``food-drink``."""
    return re.sub(r"[^0-9a-z]+", "-", name.casefold()).strip("-")


def _class_id(label: int | str, num_classes: int, class_names: list[str]) -> int:
    """The id of a class given by id, by name, or by its name's `class_slug` (any case and punctuation)."""
    if isinstance(label, numbers.Integral) and not isinstance(label, bool):
        label = int(label)  # numpy integers too
    if isinstance(label, str) and label in class_names:
        return class_names.index(label)
    slugged = [
        i for i, name in enumerate(class_names) if isinstance(label, str) and class_slug(name) == class_slug(label)
    ]
    if len(slugged) > 1 and class_slug(label):
        ambiguous = ", ".join(repr(class_names[i]) for i in slugged)
        raise ValueError(f"class {label!r} could be any of {ambiguous}: give one of them exactly")
    if len(slugged) == 1 and class_slug(label):
        return slugged[0]
    if isinstance(label, str) and label.strip().isdigit():
        label = int(label)
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < num_classes:
        return label
    shown = [name if class_slug(name) == name else f"{name} ({class_slug(name)})" for name in class_names]
    names = f": {', '.join(shown)}" if class_names else ""
    raise ValueError(f"unknown class {label!r}; this model knows ids 0-{num_classes - 1}{names}")


def check_guidance(
    labels: torch.Tensor | None,
    guidance_scale: float | None,
    guidance_rescale: float,
    conditional: bool,
    default_scale: float,
) -> float | None:
    """The guidance scale a sampling call uses (None: no guidance), its arguments checked.

    Raises:
        ValueError: for a scale that is not a finite number >= 0, a rescale outside [0, 1], guidance of
            an unconditional model, or guidance without labels.
    """
    for name, value in (("guidance_scale", guidance_scale), ("guidance_rescale", guidance_rescale)):
        optional = name == "guidance_scale" and value is None
        if not optional and not (isinstance(value, numbers.Real) and not isinstance(value, bool)):
            raise ValueError(f"{name} must be a number, got {value!r}")
    if guidance_scale is not None and not (math.isfinite(guidance_scale) and guidance_scale >= 0):
        raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
    if not 0 <= guidance_rescale <= 1:
        raise ValueError(f"guidance_rescale must be in [0, 1], got {guidance_rescale!r}")
    if (guidance_scale is not None or guidance_rescale != 0) and not conditional:
        raise ValueError("guidance needs a class-conditional model; this model is unconditional")
    if guidance_scale is not None and labels is None:
        raise ValueError("guidance_scale needs class_labels: the class to guide towards")
    if guidance_rescale != 0 and labels is None:
        raise ValueError("guidance_rescale needs class_labels: it rescales guidance towards a class")
    if labels is None:
        return None
    return default_scale if guidance_scale is None else float(guidance_scale)
