"""`SamplingRecord`: how a distilled ("few-step") model samples, kept as ``"sampling"`` in ``model_index.json``.

Progressive distillation (Salimans & Ho 2022) halves a sampler's steps once per stage, and each stage's
student has its own weights: a model folder holds one student per trained step count (4, 2 and 1 steps,
say), all of one `UNetConfig`, each of which samples well only at the step count it was trained for.
Guidance distillation (Meng et al. 2023) folds classifier-free guidance into the network's input, for the
range of scales w it was trained on. Consistency distillation (Song et al. 2023) trains one network that
samples with any step count (multistep consistency sampling); its record lists the recommended counts. The
record names the step counts, the one sampling uses by default
and that range, so that loading needs no flags and a call outside them is refused in one line.
"""

import math
import numbers
from dataclasses import dataclass
from typing import Any

CONSISTENCY = "consistency"  # the method whose one network samples with any step count


@dataclass(frozen=True)
class SamplingRecord:
    """The step counts and guidance scales a distilled model was trained for."""

    method: str  # how the students were made: "progressive" (Salimans & Ho 2022), "consistency" (Song et al. 2023)
    steps: tuple[int, ...]  # the step counts a student was trained for (consistency: recommended), ascending
    default_steps: int  # the step count sampling uses when none is asked for; one of steps
    guidance_range: tuple[float, float] | None = None  # (min, max) of w for a guidance-distilled model; None: unguided

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or not self.method:
            raise ValueError(f"method must be a non-empty name such as 'progressive', got {self.method!r}")
        steps = self.steps
        if not isinstance(steps, tuple | list) or not steps or not all(_is_int(n) and n >= 1 for n in steps):
            raise ValueError(f"steps must be a non-empty list of step counts >= 1, got {steps!r}")
        if list(steps) != sorted(set(steps)):
            raise ValueError(f"steps must be ascending and without repeats, got {list(steps)!r}")
        if not _is_int(self.default_steps) or self.default_steps not in steps:
            raise ValueError(f"default_steps must be one of steps {list(steps)}, got {self.default_steps!r}")
        object.__setattr__(self, "steps", tuple(steps))
        if self.guidance_range is not None:
            object.__setattr__(self, "guidance_range", _check_range(self.guidance_range))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object stored under ``"sampling"`` (lists for tuples)."""
        low_high = None if self.guidance_range is None else list(self.guidance_range)
        return {
            "method": self.method,
            "steps": list(self.steps),
            "default_steps": self.default_steps,
            "guidance_range": low_high,
        }

    @classmethod
    def from_dict(cls, data: Any, where: object) -> "SamplingRecord":
        """The record stored as ``data`` in the file ``where``.

        Raises:
            ValueError: one line naming ``where`` and the field that is missing, unknown or bad.
        """
        if not isinstance(data, dict):
            raise ValueError(f"{where}: sampling must be an object, got {data!r}")
        unknown = sorted(set(data) - {"method", "steps", "default_steps", "guidance_range"})
        missing = [key for key in ("method", "steps", "default_steps") if key not in data]
        if unknown or missing:
            which = f"unknown field(s) {unknown}" if unknown else f"no field(s) {missing}"
            raise ValueError(f"{where}: sampling has {which}; it holds method, steps, default_steps, guidance_range")
        try:
            return cls(data["method"], data["steps"], data["default_steps"], data.get("guidance_range"))
        except ValueError as e:
            raise ValueError(f"{where}: sampling.{e}") from None

    def steps_text(self) -> str:
        """The step counts as prose: ``1, 2 or 4``."""
        counts = [str(n) for n in self.steps]
        return counts[0] if len(counts) == 1 else f"{', '.join(counts[:-1])} or {counts[-1]}"

    @property
    def any_steps(self) -> bool:
        """Whether one network samples with any step count (consistency), rather than one per count in `steps`."""
        return self.method == CONSISTENCY

    @property
    def student_steps(self) -> tuple[int, ...]:
        """The step counts with weights of their own besides the default's: none when one network serves all."""
        return () if self.any_steps else tuple(n for n in self.steps if n != self.default_steps)

    def check_steps(self, num_inference_steps: object) -> int:
        """``num_inference_steps``, refused unless it is one of the trained step counts (consistency: any >= 1;
        the sampler refuses one past the schedule's timesteps)."""
        if self.any_steps:
            if not _is_int(num_inference_steps) or num_inference_steps < 1:
                raise ValueError(
                    f"this consistency-distilled model samples with any step count >= 1 ({self.steps_text()} "
                    f"recommended); got {num_inference_steps!r} (num_inference_steps)"
                )
            return num_inference_steps
        if not _is_int(num_inference_steps) or num_inference_steps not in self.steps:
            raise ValueError(
                f"this distilled model samples with {self.steps_text()} steps; "
                f"got {num_inference_steps!r} (num_inference_steps)"
            )
        return num_inference_steps

    def check_guidance_scale(self, guidance_scale: float) -> None:
        """Refuse a guidance scale outside `guidance_range` (a model without one takes any)."""
        if self.guidance_range is None:
            return
        low, high = self.guidance_range
        if not low <= guidance_scale <= high:
            raise ValueError(
                f"this guidance-distilled model was trained for guidance_scale in [{low:g}, {high:g}]; "
                f"got {guidance_scale:g}"
            )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_range(value: object) -> tuple[float, float]:
    """``(min, max)`` of two finite numbers with 0 <= min <= max, as floats."""
    pair = list(value) if isinstance(value, tuple | list) else None
    numbers_ok = pair is not None and len(pair) == 2
    numbers_ok = numbers_ok and all(isinstance(w, numbers.Real) and not isinstance(w, bool) for w in pair)
    if not numbers_ok or not all(math.isfinite(w) for w in pair) or not 0 <= pair[0] <= pair[1]:
        raise ValueError(f"guidance_range must be [min, max] with 0 <= min <= max, or null, got {value!r}")
    return float(pair[0]), float(pair[1])
