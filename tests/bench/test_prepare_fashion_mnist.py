"""bench/prepare_fashion_mnist.py on small IDX files written in the test (the real ones are 30 MB)."""

import gzip
import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "prepare_fashion_mnist.py"
spec = importlib.util.spec_from_file_location("prepare_fashion_mnist", SCRIPT)
prep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prep)


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("compress", [True, False])
def test_writes_one_png_per_image_into_its_class_folder(tmp_path, compress):
    images = np.arange(5 * 28 * 28, dtype=np.int64).reshape(5, 28, 28) % 256
    labels = np.array([0, 9, 9, 3, 0])
    write_idx(tmp_path / "train-images-idx3-ubyte", images, compress)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels, compress)
    assert prep.main(["--source", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert written == [
        "ankle-boot/00001.png",
        "ankle-boot/00002.png",
        "dress/00003.png",
        "t-shirt/00000.png",
        "t-shirt/00004.png",
    ]
    png = Image.open(tmp_path / "out" / "dress" / "00003.png")
    assert png.mode == "L" and png.size == (28, 28)
    np.testing.assert_array_equal(np.asarray(png), images[3])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(prep.CLASS_NAMES)


def test_limit_and_errors(tmp_path, capsys):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((4, 28, 28)))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([1, 1, 2, 2]))
    assert prep.prepare(tmp_path, tmp_path / "o", "test", limit=3) == 3
    assert prep.main(["--source", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "train-images-idx3-ubyte[.gz] not found; install it with: apt-get install dataset-fashion-mnist" in (
        capsys.readouterr().err
    )
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train-images-idx3-ubyte").write_bytes(struct.pack(">HBB", 0, 0x08, 1) + struct.pack(">I", 9))
    write_idx(tmp_path / "bad" / "train-labels-idx1-ubyte", np.zeros(9), compress=False)
    with pytest.raises(ValueError, match="is truncated: expected 9 values, found 0"):
        prep.prepare(tmp_path / "bad", tmp_path / "o2")
