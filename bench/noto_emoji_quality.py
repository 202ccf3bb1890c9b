"""Quality of a class-conditional Noto Emoji model: FD and KID, class agreement, and memorization.

    python bench/noto_emoji_quality.py --data /tmp/emoji/data --model runs/noto-emoji/model --work runs/quality \
        [--num-images 1000] [--guidance default] [--steps 20] [--sampler NAME] [--dtype fp32|bf16] [--seed 0] \
        [--classifier-epochs 30] [--device cpu|cuda] [--write-card runs/noto-emoji/model/README.md]

--data is the folder bench/prepare_noto_emoji.py writes: train/ and test/, each with the same category
folders, read at the model's size with transparency on white, as training reads them. The parts, each
timed:

1. samples: --num-images images with a class each, the classes in the test split's proportions (largest
   remainder), in class order; image i uses seed --seed + i; the model's own sampler and guidance unless
   given. Cached in --work.
2. FD and KID in EfficientNet-Lite0 features against all of test/. Floors: a seeded draw of as many
   training images (so FD is at the same N) against test/, and test/ against itself split in two halves by
   a seeded shuffle of emoji (an emoji and its skin-tone variations stay in one half, by split.json's
   groups; FD at half the test count: compare its KID, which is unbiased, not its FD).
3. class agreement: a color `Classifier` trained on train/ by bench/train_classifier.py (cached in --work)
   names the requested class; its accuracy on test/ is the ceiling, and agreement / ceiling the summary,
   over all images and balanced (the mean of the per-class shares, so the large People & Body class does
   not speak for the rest).
4. memorization (`diffusion.metrics.memorization`): each sample's nearest training images in pixels (in
   [0, 1], flattened) and in the same features: (a) the share nearer than the median test image, (b) the
   share of near copies (nearest / second nearest < 1/3); the same figures for test/ as the reference.
   --work/closest-pairs.png shows the 8 samples nearest in pixels, each beside its training image, among the
   samples with as much ink as a training image: the (nearly) blank samples, with a smaller share of ink
   pixels (a channel darker than `INK`) than the least-inked training image, are counted and left out of the
   picture, since a blank is near every pale training image without copying any.

Prints Markdown tables and the wall time of each part; --write-card FILE replaces the text between
``<!-- quality -->`` and ``<!-- /quality -->`` in FILE with them and the command.
"""

import argparse
import hashlib
import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from PIL import Image

from diffusion.data import ImageFolder
from diffusion.image import make_grid, to_pil
from diffusion.metrics import QualityResult, compare_features, load_feature_extractor
from diffusion.metrics.classifier import Classifier
from diffusion.metrics.memorization import NEAR_COPY_RATIO, MemorizationReport, memorization_report
from diffusion.pipeline import DiffusionPipeline

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- quality -->", "<!-- /quality -->"
EXTRACTOR = "efficientnet-lite0"
NUM_PAIRS = 8  # sample/training pairs in closest-pairs.png
PAIRS = "closest-pairs.png"  # the picture of them, in --work and beside the --write-card file
UPSCALE = 3  # closest-pairs.png's pixels per image pixel (nearest neighbour)
INK = 0.9  # a pixel with a channel below this (in [0, 1], on white) is ink
SKIN_TONES = {"1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff"}  # Fitzpatrick modifiers in Noto's file names


class Split:
    """One folder of --data: images ``(n, 3, h, w)`` float32 in [0, 1] on white, labels ``(n,)``, file names."""

    def __init__(self, folder: Path, size: tuple[int, int], class_names: list[str]) -> None:
        dataset = ImageFolder(folder, size, 3, hflip=False)
        if dataset.class_names != class_names:
            raise SystemExit(f"{folder} has the classes {dataset.class_names}; the model has {class_names}")
        batch = dataset.batch([(i, 0) for i in range(len(dataset))])  # unflipped, centre-fitted
        self.images = batch.images.float() / 255  # (n, 3, h, w) in [0, 1]
        self.labels = batch.labels
        self.names = [dataset.name(i) for i in range(len(dataset))]


class Timer:
    """Wall time of each part, printed as it ends."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start
        print(f"[{name}: {self.seconds[name]:.1f} s]", flush=True)


def parse_guidance(text: str) -> float | None:
    """``"default"`` -> None (the pipeline's default scale); otherwise a scale >= 0."""
    if text == "default":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected 'default' or a guidance scale >= 0, got {text!r}")
    return value


def check_model(pipe: DiffusionPipeline, name: object) -> None:
    """Exits with one line unless ``pipe`` is class-conditional and makes RGB on white, as the data is read."""
    if pipe.unet.config.num_classes is None:
        raise SystemExit(f"{name} is unconditional; give a class-conditional model")
    if pipe.unet.config.in_channels != 3 or pipe.background != "white":
        raise SystemExit(
            f"{name} makes {pipe.unet.config.in_channels}-channel images on {pipe.background}; this bench compares "
            "RGB on white, as the data is read: give a model trained with --channels 3 --background white"
        )


def class_labels(num_images: int, counts: list[int]) -> list[int]:
    """``num_images`` class labels in class order, each class's share that of ``counts`` (largest remainder)."""
    total = sum(counts)
    shares = [num_images * c / total for c in counts]
    sizes = [int(s) for s in shares]
    by_remainder = sorted(range(len(counts)), key=lambda c: sizes[c] - shares[c])  # largest remainder first
    for c in by_remainder[: num_images - sum(sizes)]:
        sizes[c] += 1
    return [c for c, size in enumerate(sizes) for _ in range(size)]


def emoji_group(name: str, groups: dict[str, str]) -> str:
    """The emoji of image file ``name`` (``category/file.png``): its entry in ``groups`` (file name -> its emoji's
    own file, from split.json), else the name without skin-tone modifiers and variation selectors (data
    prepared before split.json recorded groups; a few variations, such as couples', are named otherwise)."""
    if Path(name).name in groups:
        return groups[Path(name).name]
    return "-".join(p for p in Path(name).stem.split("-") if p not in SKIN_TONES and p != "fe0f")


def read_groups(data: Path) -> dict[str, str]:
    """``data/split.json``'s ``groups`` (each image's emoji), or ``{}`` where it has none."""
    path = data / "split.json"
    return json.loads(path.read_text()).get("groups", {}) if path.is_file() else {}


def halves_by_group(names: list[str], seed: int, groups: dict[str, str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Two index sets of about half of ``names`` each: whole emoji (`emoji_group`) in a seeded order, the first
    until half the images are in, the rest in the second."""
    members_of: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        members_of.setdefault(emoji_group(name, groups), []).append(i)
    members = list(members_of.values())
    order = torch.randperm(len(members), generator=torch.Generator().manual_seed(seed)).tolist()
    first: list[int] = []
    second: list[int] = []
    for g in order:
        (first if len(first) < len(names) / 2 else second).extend(members[g])
    return torch.tensor(first), torch.tensor(second)


def fingerprint(*parts: object) -> str:
    """A short name for cached files made from ``parts``: a path by its full name and the last change of its
    files (Markdown notes and `PAIRS` aside, so that --write-card into a model's own folder keeps its samples
    cached)."""
    text = []
    for part in parts:
        if isinstance(part, Path) and part.exists():
            files = [p for p in [part, *part.rglob("*")] if p.suffix != ".md" and p.name != PAIRS]
            part = f"{part.resolve()}@{max(p.stat().st_mtime_ns for p in files)}"
        text.append(str(part))
    return hashlib.sha1("|".join(text).encode()).hexdigest()[:12]


def cached(path: Path, make):
    """``torch.load(path)`` if it exists, else ``make()`` saved there (via a temporary file) and returned."""
    if path.is_file():
        return torch.load(path, weights_only=True)
    value = make()
    tmp = path.with_name(path.name + ".tmp")
    torch.save(value, tmp)
    tmp.replace(path)
    return value


def generate(pipe: DiffusionPipeline, args: argparse.Namespace, counts: list[int], key: str) -> dict:
    """``{"images": (n, 3, h, w) in [0, 1], "labels": (n,), "seconds": float}``, from --work or sampled now, the
    classes in the proportions of ``counts``."""
    sampler = args.sampler or pipe.scheduler_name()

    def make() -> dict:
        labels = class_labels(args.num_images, counts)
        start = time.perf_counter()
        images = pipe(
            args.num_images, args.steps, sampler, class_labels=labels, guidance_scale=args.guidance,
            seed=args.seed, batch_size=args.batch_size, output_type="tensor", progress=True,
        )  # fmt: skip
        return {"images": images, "labels": torch.tensor(labels), "seconds": time.perf_counter() - start}

    return cached(args.work / f"samples-{key}.pt", make)


def features(extractor, images: torch.Tensor, path: Path) -> torch.Tensor:
    """``(n, d)`` features of images in [0, 1], cached at ``path``."""
    return cached(path, lambda: extractor.features(images * 2 - 1))


def train_classifier(args: argparse.Namespace, size: tuple[int, int]) -> Classifier:
    """The color classifier of train/ (tested on test/), trained by bench/train_classifier.py once per --work."""
    out = args.work / f"classifier-{size[0]}px-{args.classifier_epochs}ep-{fingerprint(args.data)}"
    if not (out / "model.safetensors").is_file():
        command = [
            sys.executable, str(ROOT / "bench" / "train_classifier.py"), "--data", str(args.data / "train"),
            "--test", str(args.data / "test"), "--out", str(out), "--channels", "3", "--image-size", str(size[0]),
            "--hflip", "--epochs", str(args.classifier_epochs), "--threads", str(torch.get_num_threads()),
        ]  # fmt: skip
        if subprocess.run(command).returncode != 0:
            raise SystemExit("bench/train_classifier.py failed (its output is above)")
    return Classifier.from_pretrained(out).eval()


def quality_rows(sampled: torch.Tensor, train: torch.Tensor, test: torch.Tensor, halves: tuple, seed: int) -> list:
    """(label, `QualityResult`) for the samples' features and the two floors, each against the test features;
    ``halves`` are the two index sets of the test split's half-vs-half floor."""

    def compare(a: torch.Tensor, b: torch.Tensor) -> QualityResult:
        return compare_features(a, b, EXTRACTOR, generator=torch.Generator().manual_seed(seed))

    draw = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[: len(sampled)]
    return [
        ("samples vs test split", compare(sampled, test)),
        (f"training split ({len(draw)}, seeded draw) vs test split: floor", compare(train[draw], test)),
        ("test split, half vs half: floor", compare(test[halves[0]], test[halves[1]])),
    ]


def quality_table(rows: list) -> str:
    lines = ["| images | N vs reference | FD@N | KID x 10^3 (mean ± std) |", "|---|---:|---:|---:|"]
    for label, r in rows:
        kid = f"{1e3 * r.kid:.2f} ± {1e3 * r.kid_std:.2f}"
        lines.append(f"| {label} | {r.num_images} vs {r.num_reference} | {r.fd:.2f} | {kid} |")
    return "\n".join(lines)


@torch.inference_mode()
def agreement(classifier: Classifier, images: torch.Tensor, labels: torch.Tensor) -> dict[int, float]:
    """Class -> the share of its images the classifier assigns to it."""
    predicted = torch.cat([classifier(batch * 2 - 1).argmax(dim=1) for batch in images.split(500)])
    hits = (predicted == labels).double()
    return {c: hits[labels == c].mean().item() for c in labels.unique().tolist()}


def agreement_table(samples: dict, test: dict, sample_labels: torch.Tensor, test_labels: torch.Tensor,
                    class_names: list[str]) -> str:  # fmt: skip
    """All-image and balanced agreement of the samples and the test split, their ratios, and each class. Balanced
    is the mean over the test split's classes; a class with no sample makes the samples' balanced figure nan."""

    def overall(per_class: dict, labels: torch.Tensor) -> float:
        return sum(per_class[c] * (labels == c).sum().item() for c in per_class) / len(labels)

    def balanced(per_class: dict) -> float:
        return sum(per_class.get(c, float("nan")) for c in test) / len(test)

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    rows = [
        ("samples (the requested class)", overall(samples, sample_labels), balanced(samples)),
        ("test split (its own class): the ceiling", overall(test, test_labels), balanced(test)),
    ]
    rows.append(("agreement / ceiling", ratio(rows[0][1], rows[1][1]), ratio(rows[0][2], rows[1][2])))
    lines = ["| images | all images | balanced (mean over classes) |", "|---|---:|---:|"]
    lines += [f"| {label} | {a:.3f} | {b:.3f} |" for label, a, b in rows]
    lines += ["", "| class | samples | test split | samples / test split |", "|---|---:|---:|---:|"]
    for c in sorted(test):
        share = samples.get(c, float("nan"))
        lines.append(f"| {class_names[c]} | {share:.1%} | {test[c]:.1%} | {ratio(share, test[c]):.2f} |")
    return "\n".join(lines)


def memorization_table(reports: dict[str, MemorizationReport]) -> str:
    lines = [
        "| space | images | median nearest-training distance | (a) nearer than the median test image "
        f"| (b) near copies (d1/d2 < {NEAR_COPY_RATIO:.3g}) |",
        "|---|---|---:|---:|---:|",
    ]
    for space, r in reports.items():
        median = torch.quantile(r.nearest, 0.5).item()
        lines.append(f"| {space} | samples | {median:.3f} | {r.below_test_median:.1%} | {r.near_copies:.1%} |")
        lines.append(f"| {space} | test split | {r.test_median:.3f} | {r.test_below_median:.1%} | "
                     f"{r.test_near_copies:.1%} |")  # fmt: skip
    return "\n".join(lines)


def ink_share(images: torch.Tensor) -> torch.Tensor:
    """``(n,)`` each image's share of pixels with a channel darker than `INK` (images ``(n, 3, h, w)`` on white)."""
    return (images < INK).any(dim=1).flatten(1).double().mean(dim=1)


def pairs_table(report: MemorizationReport, inked: torch.Tensor, labels: torch.Tensor, train: Split,
                class_names: list[str]) -> str:  # fmt: skip
    """The closest pairs of ``report`` (made of the samples ``inked`` indexes), by the samples' own numbers."""
    lines = ["| sample | requested class | nearest training image | pixel L2 | d1/d2 |", "|---:|---|---|---:|---:|"]
    for sample, image, distance in report.closest:
        number, ratio = inked[sample].item(), report.ratios[sample]
        lines.append(
            f"| {number} | {class_names[labels[number]]} | {train.names[image]} | {distance:.3f} | {ratio:.3f} |"
        )
    return "\n".join(lines)


def save_pairs(report: MemorizationReport, samples: torch.Tensor, train: torch.Tensor, path: Path) -> None:
    """The closest pairs of ``report`` (made of ``samples``), sample left and training image right (a grey line
    between), upscaled `UPSCALE` x, four pairs per row."""
    line = torch.full((3, samples.shape[2], 1), 0.5)  # (3, h, 1)
    pairs = torch.stack(
        [torch.cat([samples[s], line, train[t]], dim=2) for s, t, _ in report.closest]
    )  # (p, 3, h, 2w+1)
    tiles = [p.resize((p.width * UPSCALE, p.height * UPSCALE), Image.Resampling.NEAREST) for p in to_pil(pairs)]
    make_grid(tiles, nrow=4, padding=2 * UPSCALE).save(path)


def read_card(path: Path) -> str:
    """The text of the --write-card file; exits with one line unless it exists and has both markers."""
    if not path.is_file():
        raise SystemExit(f"--write-card {path} not found; give an existing model card (README.md)")
    card = path.read_text(encoding="utf-8")
    if BEGIN not in card or END not in card:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} markers; add them where the tables belong")
    return card


def write_card(path: Path, text: str) -> None:
    """Replace what lies between `BEGIN` and `END` in ``path`` with ``text``."""
    head, _, rest = read_card(path).partition(BEGIN)
    _, _, tail = rest.partition(END)
    path.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}", encoding="utf-8")


def pairs_picture(args: argparse.Namespace) -> str:
    """The line that shows --work/closest-pairs.png; with --write-card, a copy beside the card, linked by name."""
    if args.write_card is None:
        return f"The {NUM_PAIRS} closest pairs (sample left, training image right): {args.work / PAIRS}"
    shutil.copyfile(args.work / PAIRS, args.write_card.parent / PAIRS)
    return f"![the {NUM_PAIRS} closest pairs, sample left, training image right]({PAIRS})"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with train/ and test/ category folders")
    parser.add_argument("--model", required=True, help="the class-conditional model folder")
    parser.add_argument("--work", type=Path, required=True, help="folder for samples, features and the classifier")
    parser.add_argument("--num-images", type=int, default=1000, help="samples (N of FD@N); at least 2")
    parser.add_argument("--guidance", type=parse_guidance, default=None, help="a scale, or 'default' (the model's)")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps (default: 20)")
    parser.add_argument("--sampler", default=None, help="sampler name (default: the model's own)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="the UNet's dtype when sampling")
    parser.add_argument("--batch-size", type=int, default=250, help="images per sampling batch")
    parser.add_argument("--seed", type=int, default=0, help="sample seeds (seed + i), draws and KID subsets")
    parser.add_argument("--classifier-epochs", type=int, default=30, help="epochs of the agreement classifier")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--write-card", type=Path, default=None, help="a model card with the quality markers")
    args = parser.parse_args()
    if args.num_images < 2:
        parser.error(f"--num-images must be at least 2, got {args.num_images}")
    if args.write_card is not None:
        read_card(args.write_card)  # before the work, not after it
    return args


def measure(args: argparse.Namespace, timer: Timer) -> tuple[dict, list[str]]:
    """Every part, timed: the sampled row and the Markdown tables."""
    with timer.part("load model and data"):
        dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
        pipe = DiffusionPipeline.from_pretrained(args.model, device=args.device, dtype=dtype)
        check_model(pipe, args.model)
        size, names = tuple(pipe.unet.config.sample_size), list(pipe.class_names)
        train, test = Split(args.data / "train", size, names), Split(args.data / "test", size, names)
    with timer.part("samples"):
        sampler = args.sampler or pipe.scheduler_name()
        counts = torch.bincount(test.labels, minlength=len(names)).tolist()
        key = fingerprint(
            Path(args.model), sampler, args.steps, args.guidance, args.num_images, args.seed, dtype, counts
        )
        row = generate(pipe, args, counts, key)
        samples, labels = row["images"], row["labels"]  # (n, 3, h, w) in [0, 1], (n,)
    with timer.part(f"{EXTRACTOR} features"):
        extractor = load_feature_extractor(EXTRACTOR, device=args.device)
        data_key = fingerprint(args.data, size)
        train_f = features(extractor, train.images, args.work / f"features-train-{data_key}.pt")  # (m, 1280)
        test_f = features(extractor, test.images, args.work / f"features-test-{data_key}.pt")  # (t, 1280)
        sample_f = features(extractor, samples, args.work / f"features-samples-{key}.pt")  # (n, 1280)
    with timer.part("FD and KID"):
        halves = halves_by_group(test.names, args.seed, read_groups(args.data))
        quality = quality_table(quality_rows(sample_f, train_f, test_f, halves, args.seed))
    with timer.part("classifier"):
        classifier = train_classifier(args, size)
        agree = agreement(classifier, samples, labels), agreement(classifier, test.images, test.labels)
        agree_table = agreement_table(*agree, labels, test.labels, names)
    with timer.part("memorization"):
        spaces = {"pixels": (samples, train.images, test.images), EXTRACTOR: (sample_f, train_f, test_f)}
        reports = {
            space: memorization_report(*(x.flatten(1) for x in vectors), num_pairs=NUM_PAIRS)
            for space, vectors in spaces.items()
        }
        least = ink_share(train.images).min().item()  # the least-inked training image's share of ink pixels
        inked = (ink_share(samples) >= least).nonzero().squeeze(1)  # (k,) the samples that are not (nearly) blank
        shown = memorization_report(samples[inked].flatten(1), train.images.flatten(1), test.images.flatten(1),
                                    num_pairs=NUM_PAIRS)  # fmt: skip
        save_pairs(shown, samples[inked], train.images, args.work / PAIRS)
    blank = len(samples) - len(inked)
    pairs = (
        f"{blank} of {len(samples)} samples ({blank / len(samples):.1%}) are blank or nearly so: less of their pixels "
        f"are ink (a channel below {INK}) than the {least:.1%} of the least-inked training image. The {NUM_PAIRS} "
        f"other samples nearest a training image in pixels:\n\n" + pairs_table(shown, inked, labels, train, names)
    )
    return row, [quality, agree_table, memorization_table(reports), pairs]


def main() -> None:
    args = parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    row, tables = measure(args, timer)
    command = shlex.join(["python", "bench/noto_emoji_quality.py", *sys.argv[1:]])
    sampled = (
        f"Sampling the {len(row['images'])} images took {row['seconds']:.1f} s (when they were made; cached since)."
    )
    times = ["| part | seconds |", "|---|---:|", *(f"| {k} | {v:.1f} |" for k, v in timer.seconds.items())]
    text = "\n\n".join([f"```bash\n{command}\n```", *tables, pairs_picture(args), sampled, "\n".join(times)])
    print(f"\n{text}")
    if args.write_card is not None:
        write_card(args.write_card, text)
        print(f"\nwrote the tables into {args.write_card}")


if __name__ == "__main__":
    main()
