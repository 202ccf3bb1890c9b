"""Class-conditional sampling against guidance scale: does a classifier name the requested class, and at what FD?

    python bench/class_conditional.py --data data/fashion-mnist --cache runs/cfg \
        [--per-class 100] [--scales 0 1 1.5 2 3 4 6] [--dtype bf16] [--write-docs docs/benchmarks.md]

The model is the shipped class-conditional Fashion-MNIST model (or --model); the judge is the shipped
Fashion-MNIST classifier (`assets/fashion-mnist-classifier`), whose penultimate layer is also the
feature space of FD and KID. For each guidance scale w, --per-class images of every class are
generated (image i with seed --seed + i, so every row starts from the same noise) with the model's
own sampler (or --scheduler) and --steps steps; accuracy is the share of them the classifier assigns to the requested
class. w = 0 is the unconditional model, so its accuracy is chance. A first row classifies real images
(--per-class of each class, drawn by a seeded shuffle of each class folder of --data, the training
split), which also are the FD/KID reference; a second row is another such draw: the FD floor.

Each row's images and wall time are cached in --cache, so rows can run on separate cores and the table
is assembled afterwards. --write-docs replaces the table between ``<!-- class-conditional -->`` and
``<!-- /class-conditional -->``.
"""

import argparse
import time
from pathlib import Path

import torch

from diffusion.data import find_image_files, fit, load_image, to_tensor
from diffusion.metrics import extract_features, frechet_distance, gaussian_stats, kernel_inception_distance
from diffusion.metrics.classifier import Classifier
from diffusion.pipeline import DiffusionPipeline

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- class-conditional -->", "<!-- /class-conditional -->"
KID_SUBSETS = 100


def real_images(data: Path, class_names: list[str], per_class: int, size: tuple[int, int], seed: int):
    """``per_class`` images of each class folder, by a seeded shuffle: ((n, 1, h, w) in [-1, 1], labels (n,))."""
    images, labels = [], []
    for label, name in enumerate(class_names):
        files = find_image_files(data / name)
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed + label))[:per_class]
        images += [to_tensor(fit(load_image(files[i], 1), size, None)) for i in order.tolist()]
        labels += [label] * per_class
    return torch.stack(images), torch.tensor(labels)


def judging(classifier: Classifier, reference: torch.Tensor, num_classes: int):
    """A function of images in [-1, 1] ``(n, c, h, w)`` and their requested labels ``(n,)`` that returns the
    classifier's agreement with the labels, its worst class's, and FD and KID against the ``reference``
    features (the classifier's penultimate layer)."""
    ref_stats, n = gaussian_stats(reference), len(reference)

    def judge(images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float, float, float]:
        with torch.inference_mode():
            predicted = torch.cat([classifier(b).argmax(dim=1) for b in images.split(500)])
        hits = (predicted == labels).float()
        per_class = [hits[labels == c].mean().item() for c in range(num_classes)]
        features = extract_features(classifier, images)
        fd = frechet_distance(*gaussian_stats(features), *ref_stats)
        kid, _ = kernel_inception_distance(features, reference, num_subsets=KID_SUBSETS, subset_size=min(1000, n))
        return hits.mean().item(), min(per_class), fd, kid

    return judge


def generate(pipe: DiffusionPipeline, scale: float, per_class: int, args, cache: Path) -> dict:
    """The row's images ``(n, 1, h, w)`` in [0, 1] and seconds, from the cache or generated now."""
    sampler = args.scheduler or pipe.scheduler_name()
    path = cache / f"{sampler}-w{scale:g}-{args.steps}-{per_class}-{args.dtype}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    k = pipe.unet.config.num_classes
    labels = [c for c in range(k) for _ in range(per_class)]
    start = time.perf_counter()
    images = pipe(
        len(labels), args.steps, sampler, class_labels=labels, guidance_scale=scale, seed=args.seed,
        batch_size=args.batch_size, output_type="tensor", progress=True,
    )  # fmt: skip
    row = {"images": images, "seconds": time.perf_counter() - start, "labels": torch.tensor(labels)}
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(row, path)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="class-conditional model folder (default: shipped)")
    parser.add_argument("--classifier", default=str(ROOT / "assets" / "fashion-mnist-classifier"))
    parser.add_argument("--data", type=Path, required=True, help="the training image folder, one folder per class")
    parser.add_argument("--cache", type=Path, required=True, help="folder for each row's samples")
    parser.add_argument("--per-class", type=int, default=100, help="images per class and row (default: 100)")
    parser.add_argument("--scales", type=float, nargs="+", default=[0, 1, 1.5, 2, 3, 4, 6])
    parser.add_argument("--steps", type=int, default=20, help="sampler steps (default: 20)")
    parser.add_argument("--scheduler", default=None, help="sampler name (default: the model's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only-generate", action="store_true", help="fill the cache for --scales, print nothing")
    parser.add_argument("--write-docs", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    pipe = DiffusionPipeline.from_pretrained(args.model, dtype=dtype)
    if pipe.unet.config.num_classes is None:
        raise SystemExit("the model is unconditional; give a class-conditional --model")
    rows = {scale: generate(pipe, scale, args.per_class, args, args.cache) for scale in args.scales}
    if args.only_generate:
        return

    classifier = Classifier.from_pretrained(args.classifier).eval()
    assert classifier.class_names == pipe.class_names, (classifier.class_names, pipe.class_names)
    real, real_labels = real_images(args.data, pipe.class_names, args.per_class, pipe.unet.config.sample_size, 7)
    judge = judging(classifier, extract_features(classifier, real), len(pipe.class_names))
    n = len(real)

    header = (
        f"| guidance scale w | accuracy | worst class | FD@{n} | KID@{n} x 10^3 | seconds |\n"
        "|---|---:|---:|---:|---:|---:|"
    )
    lines = [header]
    real_acc, real_worst, _, _ = judge(real, real_labels)
    lines.append(f"| real images (training split; the reference) | {real_acc:.1%} | {real_worst:.1%} | – | – | – |")
    other, other_labels = real_images(args.data, pipe.class_names, args.per_class, pipe.unet.config.sample_size, 1007)
    acc, worst, fd, kid = judge(other, other_labels)
    lines.append(
        f"| real images, another draw (the floor) | {acc:.1%} | {worst:.1%} | {fd:.3f} | {kid * 1e3:.2f} | – |"
    )
    for scale, row in rows.items():
        acc, worst, fd, kid = judge(row["images"] * 2 - 1, row["labels"])
        lines.append(f"| {scale:g} | {acc:.1%} | {worst:.1%} | {fd:.3f} | {kid * 1e3:.2f} | {row['seconds']:.0f} |")
    table = "\n".join(lines)
    print(table)
    if args.write_docs:
        text = args.write_docs.read_text()
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        args.write_docs.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


if __name__ == "__main__":
    main()
