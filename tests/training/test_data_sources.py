"""Training on each kind of ``--data`` (folder, prepared dataset, Parquet, ``save_to_disk``), items that do not
decode, checkpoints of versions that decoded the folder at start, and the noise generator a checkpoint restores."""

import json
import logging
import re
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_trainer import HostSyncs, launch_two_cpu_processes  # tests/training is on sys.path
from tiny_run import TINY, config, final_weights, make_images

from diffusion.cli import train_main
from diffusion.data import DECODE_ERRORS, load_image
from diffusion.data.prepare import prepare
from diffusion.io.checkpoint import list_checkpoints
from diffusion.io.files import write_manifest
from diffusion.pipeline import DiffusionPipeline
from diffusion.training import Trainer
from diffusion.training.checkpointing import generator_for_state

CPU_STATE_BYTES = torch.Generator().get_state().numel()  # a CPU (Mersenne Twister) generator's state


@pytest.fixture
def data(tmp_path):
    return make_images(tmp_path / "data")  # 8 RGB 20x24 images, 4 in cats/, 4 in dogs/


@pytest.fixture
def prepared(tmp_path, data):
    """``data`` prepared at the training size, 8x8."""
    prepare(data, tmp_path / "prepared", size=(8, 8), channels=3, workers=1)
    return tmp_path / "prepared"


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)


def losses(out: Path) -> list[float]:
    return [json.loads(row)["loss"] for row in (out / "metrics.jsonl").read_text().splitlines()]


def class_names(model: Path) -> list[str]:
    return json.loads((model / "model_index.json").read_text())["class_names"]


# ----- a prepared dataset -----


def test_a_prepared_dataset_trains_as_its_folder_does_and_resumes_bit_exactly(tmp_path, data, prepared):
    # Preparing at the training size fits each file to 8x8 as the folder reader does, so the pixels, labels
    # and flips of the first 2 steps (hflip on, no random crop) are the same.
    c = dict(class_cond=True, hflip=True, random_crop=False, max_steps=4, checkpoint_every=2)
    model = Trainer(config(tmp_path, out="straight", data=str(prepared), **c), TINY).train()
    assert class_names(model) == ["cats", "dogs"]  # the folder's class subfolders, kept by the preparation
    assert DiffusionPipeline.from_pretrained(model).unet.config.num_classes == 2
    assert Trainer(config(tmp_path, out="folder", **c), TINY).train(stop_at_step=2) is None
    step_2 = {out: dict(list_checkpoints(tmp_path / out))[2] for out in ("straight", "folder")}
    assert_same_weights(*(load_file(path / "model.safetensors") for path in step_2.values()))
    assert losses(tmp_path / "folder") == losses(tmp_path / "straight")[:2]
    assert Trainer(config(tmp_path, out="resumed", data=str(prepared), **c), TINY).train(stop_at_step=2) is None
    assert [s for s, _ in list_checkpoints(tmp_path / "resumed")] == [2]
    Trainer(config(tmp_path, out="resumed", data=str(prepared), **c), TINY).train()
    assert_same_weights(final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed"))
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")


def test_the_model_card_counts_the_files_a_preparation_skipped(tmp_path, data):
    (data / "cats" / "broken.png").write_text("not an image")
    manifest = prepare(data, tmp_path / "prepared", size=(8, 8), channels=3, workers=1)
    assert manifest["counts"]["skipped"] == 1
    model = Trainer(config(tmp_path, data=str(tmp_path / "prepared"), max_steps=1), TINY).train()
    assert "8 images (1 skipped)" in (model / "README.md").read_text()


# ----- Hugging Face datasets -----


def hf_dataset(labels: bool = True) -> datasets.Dataset:
    """8 RGB 12x10 images; ``labels``: a ClassLabel column ``label`` (a, b), an int ``n`` and a string ``s``."""
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)) for _ in range(8)]
    columns, features = {"image": images}, {"image": datasets.Image()}
    if labels:
        columns |= {"label": [0, 1] * 4, "n": [7, 3, 3, 7, 7, 7, 3, 3], "s": list("yxyyxxyx")}
        features |= {
            "label": datasets.ClassLabel(names=["a", "b"]),
            "n": datasets.Value("int64"),
            "s": datasets.Value("string"),
        }
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def save(dataset: datasets.Dataset, path: Path, kind: str) -> Path:
    if kind == "parquet":
        dataset.to_parquet(str(path.with_suffix(".parquet")))
        return path.with_suffix(".parquet")
    dataset.save_to_disk(str(path))
    return path


@pytest.mark.parametrize("kind", ["parquet", "save_to_disk"])
def test_a_hugging_face_dataset_trains_with_its_class_label_names(tmp_path, kind):
    source = save(hf_dataset(), tmp_path / "hf", kind)
    model = Trainer(config(tmp_path, data=str(source), class_cond=True, max_steps=1), TINY).train()
    assert class_names(model) == ["a", "b"]
    pipe = DiffusionPipeline.from_pretrained(model)
    assert pipe.unet.config.num_classes == 2
    assert pipe(num_images=1, num_inference_steps=2, class_labels=["b"], output_type="tensor").shape == (1, 3, 8, 8)


@pytest.mark.parametrize(
    ("column", "classes", "labels"),
    [("n", ["3", "7"], [1, 0, 0, 1, 1, 1, 0, 0]), ("s", ["x", "y"], [1, 0, 1, 1, 0, 0, 1, 0])],
)
def test_a_label_column_of_integers_or_strings_gives_the_sorted_classes(tmp_path, column, classes, labels):
    source = save(hf_dataset(), tmp_path / "hf", "parquet")
    trainer = Trainer(config(tmp_path, data=str(source), class_cond=True, label_column=column, max_steps=1), TINY)
    assert trainer.class_names == classes and trainer.unet_config.num_classes == 2
    assert trainer.dataset.labels.tolist() == labels


NO_LABELS = r"--class-cond needs labels: give --label-column, a column of .*hf\.parquet \(image\)$"
NO_COLUMN = r"hf\.parquet has no column 'nope': give --image-column one of its columns \(image, label, n, s\)$"


@pytest.mark.parametrize(
    ("labels", "flags", "message"),
    [(False, ["--class-cond"], NO_LABELS), (True, ["--image-column", "nope"], NO_COLUMN)],
    ids=["class-cond-without-labels", "unknown-image-column"],
)
def test_the_cli_refuses_a_missing_column_in_one_line(tmp_path, capsys, labels, flags, message):
    source = save(hf_dataset(labels), tmp_path / "hf", "parquet")
    capsys.readouterr()  # the progress bar of writing the Parquet file
    args = ["--data", str(source), "--out", str(tmp_path / "out"), "--preset", "tiny", "--image-size", "8"]
    assert train_main([*args, "--batch-size", "4", "--max-steps", "1", *flags]) == 2
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("diffusion-train: error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr  # above it: datasets' progress bars, if any
    assert re.search(message, errors[0]), errors[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # about 15 s: two processes start, import torch and meet over gloo
def test_two_processes_train_class_conditionally_on_a_parquet_file(tmp_path):
    source = save(hf_dataset(), tmp_path / "hf", "parquet")
    out = tmp_path / "ddp"
    done = launch_two_cpu_processes(source, out, "--max-steps", "2", "--class-cond", "--log-every", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("model written to") == 1
    assert class_names(out / "model") == ["a", "b"]
    assert (out / "model" / "unet" / "model.safetensors").is_file()
    assert [json.loads(row)["step"] for row in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


# ----- items that do not decode -----


def decode_error(path: Path) -> str:
    """Why ``path`` does not decode, as a batch names it: the exception's type and message."""
    with pytest.raises(DECODE_ERRORS) as error:
        load_image(path, 3)
    return f"{type(error.value).__name__}: {error.value}"


def test_a_file_that_does_not_decode_is_warned_of_once_counted_and_kept_in_the_checkpoint(tmp_path, data, caplog):
    broken = data / "cats" / "broken.png"
    broken.write_text("not an image")
    # One batch of all 9 files a step: the broken one is met at every step, replaced by the next file.
    c = config(tmp_path, batch_size=9, max_steps=3, log_every=1, checkpoint_every=3)
    with caplog.at_level(logging.WARNING, logger="diffusion"):
        model = Trainer(c, TINY).train()
    rows = [json.loads(row) for row in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0]["skipped_files"] == 1 and rows[0]["skipped"] == ["cats/broken.png"]
    assert all(r["skipped_files"] == 1 and "skipped" not in r for r in rows[1:]), rows
    warnings = [m for m in caplog.messages if m.startswith("skipped cats/broken.png, which does not decode")]
    assert len(warnings) == 1, caplog.messages
    _, step_3 = list_checkpoints(tmp_path / "out")[-1]
    state = json.loads((step_3 / "trainer_state.json").read_text())
    assert state["skipped"] == {"cats/broken.png": decode_error(broken)}
    assert state["listing"] == "names" and state["dataset_size"] == 9
    assert "`: 8 images (1 skipped), fitted to 8x8 RGB" in (model / "README.md").read_text()


def make_old(checkpoint: Path) -> None:
    """Make ``checkpoint`` look written by a version that decoded every file at start: no ``listing``, no
    ``skipped``; its manifest rewritten so that it stays intact."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    del state["listing"], state["skipped"]
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    write_manifest(checkpoint)


def test_a_checkpoint_of_a_version_that_decoded_the_folder_resumes_without_its_new_broken_file(tmp_path, data):
    Trainer(config(tmp_path, out="straight"), TINY).train()  # 4 steps on the 8 images
    assert Trainer(config(tmp_path, out="resumed"), TINY).train(stop_at_step=2) is None
    _, step_2 = list_checkpoints(tmp_path / "resumed")[-1]
    make_old(step_2)
    broken = data / "cats" / "broken.png"
    broken.write_text("not an image")  # 9 files now, 8 of them decode: as many as the checkpoint's dataset_size
    resumed = Trainer(config(tmp_path, out="resumed"), TINY)
    resumed.train()
    assert len(resumed.dataset) == 8 and resumed.skipped.known == {"cats/broken.png": decode_error(broken)}
    assert_same_weights(final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed"))
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")
    # A checkpoint of this version lists the names, so 9 files are not the 8 it began with, broken or not.
    _, step_4 = list_checkpoints(tmp_path / "straight")[-1]
    assert json.loads((step_4 / "trainer_state.json").read_text())["listing"] == "names"
    with pytest.raises(ValueError) as refused:
        Trainer(config(tmp_path, out="straight"), TINY).train()
    message = str(refused.value)
    assert "\n" not in message and "other settings: the number of images (8 -> 9)" in message, message


def test_the_model_card_of_a_run_resumed_from_a_decoding_version_counts_the_good_images(tmp_path, data):
    c = dict(max_steps=2, checkpoint_every=1)
    Trainer(config(tmp_path, **c), TINY).train(stop_at_step=1)
    make_old(list_checkpoints(tmp_path / "out")[-1][1])
    (data / "cats" / "broken.png").write_text("not an image")
    model = Trainer(config(tmp_path, **c), TINY).train()
    assert "`: 8 images (1 skipped), fitted to 8x8 RGB" in (model / "README.md").read_text()


# ----- host syncs -----


def test_a_class_conditional_step_on_a_prepared_dataset_never_waits_for_the_host(tmp_path, prepared):
    """As tests/training/test_trainer.py's folder run: steps between logged ones add no host syncs."""
    counts = []
    for steps in (1, 3):
        c = dict(data=str(prepared), class_cond=True, max_steps=steps, log_every=100, checkpoint_every=100)
        trainer = Trainer(config(tmp_path, out=f"o{steps}", **c), TINY)
        with HostSyncs() as syncs:
            trainer.train()
        counts.append(syncs.count)
    assert counts[1] - counts[0] == 0, counts  # the 2 steps that do not log wait for the host 0 times


# ----- the noise generator a checkpoint restores -----


def test_a_state_of_the_same_kind_sets_the_same_generator():
    generator = torch.Generator().manual_seed(1)
    reference = torch.Generator().manual_seed(5)
    restored = generator_for_state(generator, reference.get_state())
    assert restored is generator
    torch.testing.assert_close(torch.rand(6, generator=restored), torch.rand(6, generator=reference), rtol=0, atol=0)


def test_a_state_of_another_kind_reseeds_the_generator_from_it_with_a_warning(caplog):
    cuda_like = torch.arange(16, dtype=torch.uint8)  # a CUDA generator's state is 16 bytes: seed and offset
    assert CPU_STATE_BYTES != 16
    with caplog.at_level(logging.WARNING, logger="diffusion.training.checkpointing"):
        first = generator_for_state(torch.Generator().manual_seed(1), cuda_like)
        again = generator_for_state(torch.Generator().manual_seed(2), cuda_like)
        other = generator_for_state(torch.Generator().manual_seed(1), cuda_like.flip(0))
    assert first.device == torch.device("cpu")
    assert [r.levelno for r in caplog.records] == [logging.WARNING] * 3
    assert caplog.messages[0] == (
        "the checkpoint's noise generator is of a device this run lacks: it continues from a new stream"
    )
    draws = [torch.rand(6, generator=g) for g in (first, again, other)]
    torch.testing.assert_close(draws[0], draws[1], rtol=0, atol=0)  # a function of the state alone
    assert not torch.equal(draws[0], draws[2])
    assert not torch.equal(draws[0], torch.rand(6, generator=torch.Generator().manual_seed(1)))  # not kept as given


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cpu_state_given_to_a_cuda_generator_continues_on_the_cpu():
    reference = torch.Generator().manual_seed(5)
    restored = generator_for_state(torch.Generator(device="cuda").manual_seed(1), reference.get_state())
    assert restored.device == torch.device("cpu")
    torch.testing.assert_close(torch.rand(6, generator=restored), torch.rand(6, generator=reference), rtol=0, atol=0)
