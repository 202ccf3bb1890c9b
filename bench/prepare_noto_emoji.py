"""Turn Google's Noto Emoji (npm ``emoji-datasource-google``) into class folders, with a held-out test split.

    python bench/prepare_noto_emoji.py --out data/noto-emoji [--tarball emoji-datasource-google-16.0.0.tgz]

Without ``--tarball`` it runs ``npm pack emoji-datasource-google@16.0.0`` (74 MB from the npm registry) into
``--cache``. It writes ``OUT/train/<category>/<image>.png`` and ``OUT/test/<category>/<image>.png``: the 64x64
RGBA PNGs of ``package/img/google/64/``, one folder per category of ``package/emoji.json`` ("Component", the
skin-tone swatches, left out), skin-tone variations beside their emoji, and a fixed, seeded 10% of each
category's emoji (with their skin tones) held out as the test split, never trained on. Beside them:
``LICENSE-images`` (the images: Apache License 2.0), ``LICENSE-packaging`` (emoji.json and the package: MIT,
the package's own LICENSE file) and ``split.json`` (the held-out files, and ``groups``: each image's emoji, named
by its own image, which its skin-tone variations share; their names alone do not always show it).
"""

import argparse
import json
import random
import subprocess
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

PACKAGE = "emoji-datasource-google@16.0.0"
IMAGES = "package/img/google/64/"
LEFT_OUT = frozenset({"Component"})
IMAGES_LICENCE = """The emoji images are Google's Noto Emoji (https://github.com/googlefonts/noto-emoji), under the
Apache License, Version 2.0: https://www.apache.org/licenses/LICENSE-2.0. They came from the npm package
{package} (https://github.com/iamcal/emoji-data), whose packaging is under the MIT licence (LICENSE-packaging).
"""


def fetch(cache: Path) -> Path:
    """The package's tarball, downloaded once into ``cache`` by ``npm pack``."""
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob("emoji-datasource-google-*.tgz"))
    if not found:
        subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=cache, check=True, stdout=subprocess.DEVNULL)
        found = sorted(cache.glob("emoji-datasource-google-*.tgz"))
    return found[-1]


def categories(tarball: tarfile.TarFile) -> dict[str, list[list[str]]]:
    """Each kept category's emoji, sorted: per emoji of ``emoji.json`` with a Google image, its image and those
    of its skin-tone variations (kept together, so that no emoji is in both splits)."""
    entries = json.load(tarball.extractfile("package/emoji.json"))
    by_category = defaultdict(list)
    for entry in entries:
        if entry.get("has_img_google") and entry["category"] not in LEFT_OUT:
            variations = (entry.get("skin_variations") or {}).values()
            group = [entry["image"], *sorted(v["image"] for v in variations if v.get("has_img_google"))]
            by_category[entry["category"]].append(group)
    return {name: sorted(groups) for name, groups in sorted(by_category.items())}


def split(groups: list[list[str]], fraction: float, seed: int, category: str) -> set[str]:
    """The test share of one category: ``round(fraction * n)`` of its n emoji (at least one), each with its
    skin tones, drawn by ``(seed, category)``."""
    count = max(1, round(fraction * len(groups)))
    return {name for group in random.Random(f"{seed}/{category}").sample(groups, count) for name in group}


def prepare(tarball_path: Path, out: Path, fraction: float = 0.1, seed: int = 0) -> dict[str, dict[str, int]]:
    """Write the class folders, the licence files and ``split.json``; return each split's count per category."""
    counts: dict[str, dict[str, int]] = {"train": {}, "test": {}}
    held_out, group_of = {}, {}
    with tarfile.open(tarball_path) as tarball:
        members = set(tarball.getnames())
        for category, groups in categories(tarball).items():
            groups = [[n for n in group if IMAGES + n in members] for group in groups]
            group_of |= {n: group[0] for group in groups for n in group}  # each image -> its emoji's own image
            test = split([g for g in groups if g], fraction, seed, category)
            held_out[category] = sorted(test)
            names = sorted(n for group in groups for n in group)
            for part in ("train", "test"):
                folder = out / part / category
                folder.mkdir(parents=True, exist_ok=True)
                chosen = [n for n in names if (n in test) == (part == "test")]
                for name in chosen:
                    (folder / name).write_bytes(tarball.extractfile(IMAGES + name).read())
                counts[part][category] = len(chosen)
        licence = tarball.extractfile("package/LICENSE").read() if "package/LICENSE" in members else b""
    (out / "LICENSE-images").write_text(IMAGES_LICENCE.format(package=PACKAGE))
    (out / "LICENSE-packaging").write_bytes(licence or b"MIT licence: https://github.com/iamcal/emoji-data\n")
    split_record = {"seed": seed, "test_fraction": fraction, "test": held_out, "groups": group_of}
    (out / "split.json").write_text(json.dumps(split_record, indent=1))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write train/, test/ and the licences into")
    parser.add_argument("--tarball", type=Path, default=None, help="the npm tarball (default: npm pack it)")
    parser.add_argument("--cache", type=Path, default=Path("runs/noto-emoji"), help="where npm pack writes it")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="share of each category held out")
    parser.add_argument("--seed", type=int, default=0, help="seeds the held-out split")
    args = parser.parse_args(argv)
    try:
        counts = prepare(args.tarball or fetch(args.cache), args.out, args.test_fraction, args.seed)
    except (OSError, KeyError, ValueError, subprocess.CalledProcessError, tarfile.TarError) as e:
        print(f"prepare_noto_emoji: error: {e}", file=sys.stderr)
        return 2
    train, test = sum(counts["train"].values()), sum(counts["test"].values())
    print(f"wrote {train} training and {test} test images in {len(counts['train'])} categories under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
