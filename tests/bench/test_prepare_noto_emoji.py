"""bench/prepare_noto_emoji.py on a tiny npm-style tarball written in the test (the real one is 74 MB)."""

import importlib.util
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "prepare_noto_emoji.py"
spec = importlib.util.spec_from_file_location("prepare_noto_emoji", SCRIPT)
prep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prep)


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (4, 4, 4), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def _tarball(path: Path) -> Path:
    """Two kept categories (one with 20 emoji, one with 3, one of which has two skin tones), a Component
    swatch, an emoji without a Google image, and the package's LICENSE."""
    entries = [{"image": f"f{i:02d}.png", "category": "Food & Drink", "has_img_google": True} for i in range(20)]
    entries += [{"image": f"p{i}.png", "category": "People & Body", "has_img_google": True} for i in range(3)]
    entries[20]["skin_variations"] = {
        "1F3FB": {"image": "p0-1f3fb.png", "has_img_google": True},
        "1F3FC": {"image": "p0-1f3fc.png", "has_img_google": True},
        "1F3FD": {"image": "p0-1f3fd.png", "has_img_google": False},
    }
    entries += [{"image": "c.png", "category": "Component", "has_img_google": True}]
    entries += [{"image": "none.png", "category": "Objects", "has_img_google": False}]
    files = {"package/emoji.json": json.dumps(entries).encode(), "package/LICENSE": b"The MIT License (MIT)\n"}
    names = [e["image"] for e in entries] + ["p0-1f3fb.png", "p0-1f3fc.png"]
    files |= {f"package/img/google/64/{name}": _png(i) for i, name in enumerate(names) if name != "none.png"}
    with tarfile.open(path, "w:gz") as tarball:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tarball.addfile(info, io.BytesIO(data))
    return path


def _files(folder: Path) -> dict[str, list[str]]:
    return {d.name: sorted(p.name for p in d.iterdir()) for d in sorted(folder.iterdir())}


def test_writes_class_folders_with_a_seeded_test_split_that_keeps_skin_tones_together(tmp_path):
    tarball = _tarball(tmp_path / "emoji.tgz")
    counts = prep.prepare(tarball, tmp_path / "out", fraction=0.1, seed=0)
    assert (counts["train"]["Food & Drink"], counts["test"]["Food & Drink"]) == (18, 2)  # round(10% of 20 emoji)
    people_counts = (
        counts["train"]["People & Body"],
        counts["test"]["People & Body"],
    )  # 1 of 3 emoji held out (at least one)
    assert sum(people_counts) == 5 and people_counts[1] in (1, 3)  # 3: the one with two skin tones
    train, test = _files(tmp_path / "out" / "train"), _files(tmp_path / "out" / "test")
    assert sorted(train) == sorted(test) == ["Food & Drink", "People & Body"]  # no Component, no imageless one
    people = sorted(train["People & Body"] + test["People & Body"])
    assert people == ["p0-1f3fb.png", "p0-1f3fc.png", "p0.png", "p1.png", "p2.png"]
    held = test["People & Body"]
    assert len({name.split("-")[0] for name in held}) == 1  # one emoji, with its skin tones when it has them
    assert ("p0.png" in held) == ({"p0-1f3fb.png", "p0-1f3fc.png"} <= set(held))
    assert not set(train["Food & Drink"]) & set(test["Food & Drink"])
    split = json.loads((tmp_path / "out" / "split.json").read_text())
    assert split["test"] == test and split["seed"] == 0
    assert split["groups"]["p0-1f3fb.png"] == split["groups"]["p0-1f3fc.png"] == split["groups"]["p0.png"] == "p0.png"
    assert split["groups"]["p1.png"] == "p1.png" and len(split["groups"]) == 25  # every image, Component aside
    assert (tmp_path / "out" / "LICENSE-packaging").read_bytes() == b"The MIT License (MIT)\n"
    assert "Apache License, Version 2.0" in (tmp_path / "out" / "LICENSE-images").read_text()
    image = Image.open(tmp_path / "out" / "train" / "Food & Drink" / train["Food & Drink"][0])
    assert (image.mode, image.size) == ("RGBA", (4, 4))


def test_the_split_is_the_same_every_time_and_changes_with_the_seed(tmp_path):
    tarball = _tarball(tmp_path / "emoji.tgz")
    for out, seed in (("a", 0), ("b", 0), ("c", 1)):
        prep.prepare(tarball, tmp_path / out, seed=seed)
    held = {out: _files(tmp_path / out / "test")["Food & Drink"] for out in "abc"}
    assert held["a"] == held["b"] != held["c"]


def test_main_prints_the_counts_and_refuses_a_missing_tarball_in_one_line(tmp_path, capsys):
    tarball = _tarball(tmp_path / "emoji.tgz")
    assert prep.main(["--out", str(tmp_path / "out"), "--tarball", str(tarball)]) == 0
    training = 18 + 5 - len(_files(tmp_path / "out" / "test")["People & Body"])
    assert capsys.readouterr().out == (
        f"wrote {training} training and {25 - training} test images in 2 categories under {tmp_path / 'out'}\n"
    )
    assert prep.main(["--out", str(tmp_path / "x"), "--tarball", str(tmp_path / "missing.tgz")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("prepare_noto_emoji: error: ")
