"""A loss-curve PNG drawn with PIL alone (no plotting dependency)."""

import math
from pathlib import Path

from PIL import Image, ImageDraw

from ..image import save_png


def loss_curve(steps: list[int], losses: list[float], path: str | Path, size: tuple[int, int] = (640, 360)) -> None:
    """Plot loss against step on a log-scaled y axis and save it as a PNG."""
    width, height = size
    margin = 48
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([margin, 8, width - 8, height - margin], outline="black")
    points = [(s, math.log10(v)) for s, v in zip(steps, losses, strict=True) if v > 0 and math.isfinite(v)]
    if len(points) >= 2:
        x0, x1 = points[0][0], max(points[-1][0], points[0][0] + 1)
        y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
        y1 = y1 if y1 > y0 else y0 + 1e-6

        def xy(step: float, value: float) -> tuple[float, float]:
            x = margin + (step - x0) / (x1 - x0) * (width - margin - 16)
            return x, 16 + (y1 - value) / (y1 - y0) * (height - margin - 24)

        draw.line([xy(*p) for p in points], fill=(31, 119, 180), width=2)
        draw.text((4, 8), f"{10**y1:.3g}", fill="black")
        draw.text((4, height - margin - 12), f"{10**y0:.3g}", fill="black")
        draw.text((margin, height - margin + 6), f"step {x0}", fill="black")
        draw.text((width - 90, height - margin + 6), f"step {x1}", fill="black")
    draw.text((width // 2 - 40, height - 20), "training loss (log)", fill="black")
    save_png(image, path)
