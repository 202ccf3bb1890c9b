"""Train the feature-space `Classifier` used by bench/fashion_mnist_quality.py on a folder of class subfolders.

    python bench/train_classifier.py --data data/fashion-mnist \
        [--out assets/fashion-mnist-classifier] [--epochs 2] [--limit N] [--threads 1]
    python bench/train_classifier.py --data /tmp/emoji/data/train --test /tmp/emoji/data/test \
        --channels 3 --image-size 32 --hflip --epochs 30 --out W/classifier

Every ``--holdout-every``-th image (in the folder's sorted order) is held out and never trained on; with
``--test DIR`` (a folder of the same class subfolders) every image of --data is trained on and DIR's are
the held-out ones instead. The script prints the held-out accuracy per epoch and at the end, and the wall
time. Color images (``--channels 3``) have their transparency composited on white. No augmentation by
default (a flipped shoe is not a Fashion-MNIST shoe); ``--hflip`` flips a random half of each batch
(emoji are fine mirrored). Shuffling and flips use a local generator seeded by --seed; weight
initialisation uses the global generator in a forked, seeded scope, so reruns are identical.
"""

import argparse
import math
import time
from pathlib import Path

import torch
from torch import nn

from diffusion.data import ImageFolder
from diffusion.metrics.classifier import Classifier, ClassifierConfig


def load_all(dataset: ImageFolder, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``indices`` once: images ``(n, c, h, w)`` in [-1, 1] and labels ``(n,)``."""
    items = [dataset[(i, 0)] for i in indices]  # no random crop or flip, so the seed is unused
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


def labelled_folder(path: Path, size: int, channels: int) -> ImageFolder:
    """A folder of class subfolders, read unflipped at ``size`` x ``size``; exits with one line otherwise."""
    dataset = ImageFolder(path, (size, size), channels, hflip=False)
    if dataset.report.labels is None:
        raise SystemExit(f"{path} must hold one subfolder per class with the images inside")
    return dataset


def split(dataset: ImageFolder, args: argparse.Namespace, generator: torch.Generator):
    """(train images, train labels, held-out images, held-out labels): every --holdout-every-th image of
    --data held out, or with --test all of --data trained on and --test's images held out; the training
    part cut to a seeded --limit."""
    if args.test is None:
        train = [i for i in range(len(dataset)) if i % args.holdout_every != 0]
        held_x, held_y = load_all(dataset, [i for i in range(len(dataset)) if i % args.holdout_every == 0])
    else:
        test = labelled_folder(args.test, args.image_size, args.channels)
        if test.class_names != dataset.class_names:
            raise SystemExit(f"--test {args.test} has classes {test.class_names}, --data {dataset.class_names}")
        train = list(range(len(dataset)))
        held_x, held_y = load_all(test, list(range(len(test))))
    if args.limit is not None:
        train = [train[i] for i in torch.randperm(len(train), generator=generator)[: args.limit].sort().values]
    return (*load_all(dataset, train), held_x, held_y)


def flipped(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``images`` ``(b, c, h, w)`` with a random half (each image with probability 1/2) mirrored left to right."""
    flip = torch.rand(len(images), generator=generator) < 0.5  # (b,)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


@torch.inference_mode()
def accuracy(model: Classifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    correct = sum(
        (model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum().item()
        for i in range(0, len(images), batch_size)
    )
    return correct / len(images)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/fashion-mnist"), help="folder of class subfolders")
    parser.add_argument("--out", type=Path, default=Path("assets/fashion-mnist-classifier"))
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1, choices=(1, 3))
    parser.add_argument("--width", type=int, default=ClassifierConfig.width)
    parser.add_argument("--feature-dim", type=int, default=ClassifierConfig.feature_dim)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate (warm-up, then cosine)")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--holdout-every", type=int, default=10, help="hold out images whose index %% N == 0")
    parser.add_argument(
        "--test", type=Path, default=None, help="held-out folder of the same classes (all of --data is then trained on)"
    )
    parser.add_argument("--hflip", action="store_true", help="mirror a random half of each training batch")
    parser.add_argument("--limit", type=int, default=None, help="train on a seeded random subset of this many")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    dataset = labelled_folder(args.data, args.image_size, args.channels)
    generator = torch.Generator().manual_seed(args.seed)
    train_x, train_y, held_x, held_y = split(dataset, args, generator)  # (n, c, h, w), (n,), (m, c, h, w), (m,)
    held_from = f" (--test {args.test})" if args.test is not None else ""
    print(
        f"{len(dataset)} images in {len(dataset.class_names)} classes: {len(train_x)} train, {len(held_x)} held out"
        f"{held_from}; loaded in {time.perf_counter() - start:.1f} s"
    )

    config = ClassifierConfig(
        in_channels=args.channels,
        num_classes=len(dataset.class_names),
        width=args.width,
        feature_dim=args.feature_dim,
    )
    with torch.random.fork_rng():  # nn.Module init draws from the global generator; keep that local
        torch.manual_seed(args.seed)
        model = Classifier(config, dataset.class_names)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(train_x) / args.batch_size)
    total, warmup = args.epochs * steps_per_epoch, min(100, args.epochs * steps_per_epoch // 10)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        loss_sum = 0.0
        for i in range(0, len(train_x), args.batch_size):
            batch = order[i : i + args.batch_size]
            images = flipped(train_x[batch], generator) if args.hflip else train_x[batch]
            loss = nn.functional.cross_entropy(model(images), train_y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.item() * len(batch)
        model.eval()
        print(
            f"epoch {epoch + 1}/{args.epochs}: train loss {loss_sum / len(train_x):.4f}, "
            f"held-out accuracy {accuracy(model, held_x, held_y):.4f}, {time.perf_counter() - start:.0f} s"
        )

    model.save_pretrained(args.out)
    size = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    print(f"held-out accuracy {accuracy(model, held_x, held_y):.4f} on {len(held_x)} images")
    print(f"wall time {time.perf_counter() - start:.1f} s; saved {args.out} ({size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
