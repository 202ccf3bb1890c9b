"""The run's data as its steps meet it (`diffusion.training.feed`): opening it on every process, micro-batches
through workers, and the items that did not decode."""

import json
import logging
import re

import pytest
from accelerate import Accelerator
from test_trainer import launch_two_cpu_processes  # tests/training is on sys.path
from tiny_run import TINY, config, make_images

from diffusion.training import Trainer
from diffusion.training.feed import SkippedItems, micro_batches, open_data


@pytest.fixture
def data(tmp_path):
    return make_images(tmp_path / "data")  # 8 RGB 20x24 images, 4 in cats/, 4 in dogs/


def test_items_are_warned_of_once_and_the_metrics_name_each_once(caplog):
    skipped, accelerator = SkippedItems(), Accelerator(cpu=True)
    with caplog.at_level(logging.WARNING, logger="diffusion.training.feed"):
        skipped.note((("a.png", "OSError: x"), ("a.png", "OSError: x")))
        skipped.note((("b.png", "ValueError: y"),))
    assert caplog.messages == [
        "skipped a.png, which does not decode (OSError: x); the next item that does takes its place",
        "skipped b.png, which does not decode (ValueError: y); the next item that does takes its place",
    ]
    assert skipped.metrics(accelerator) == {"skipped_files": 2, "skipped": ["a.png", "b.png"]}
    skipped.note((("a.png", "OSError: x"),))  # known: neither warned of nor named again
    assert skipped.metrics(accelerator) == {"skipped_files": 2}
    assert skipped.known == {"a.png": "OSError: x", "b.png": "ValueError: y"}
    assert SkippedItems().metrics(accelerator) == {}  # rows gain the fields only once an item was skipped


def test_an_error_in_a_worker_keeps_its_own_one_line_message(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        (folder / name).write_text("not an image")
    c = config(tmp_path, data=str(folder), num_workers=1, max_steps=1)
    images = open_data(c, Accelerator(cpu=True), (8, 8))
    with pytest.raises(ValueError) as raised:
        next(micro_batches(images, c, Accelerator(cpu=True), 0, 1))
    assert str(raised.value) == (f"no item of {folder} decodes: check the files, or run diffusion-prepare to list them")


def test_a_checkpoint_names_the_items_met_since_the_last_metrics_row_and_the_next_row_too(tmp_path, data):
    (data / "cats" / "broken.png").write_text("not an image")
    c = config(tmp_path, batch_size=9, max_steps=4, checkpoint_every=1, log_every=4, sample_every=0)
    Trainer(c, TINY).train()  # step 1 meets every file and checkpoints; the first metrics row is step 4's
    state = json.loads((tmp_path / "out" / "checkpoints" / "step-2" / "trainer_state.json").read_text())
    assert list(state["skipped"]) == ["cats/broken.png"] and state["listing"] == "names"
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["skipped_files"], r.get("skipped")) for r in rows] == [(4, 1, ["cats/broken.png"])]


def test_two_processes_on_data_without_images_stop_with_the_same_line(tmp_path):
    # The main process opens the data first; its error reaches the other process, which must not wait for it.
    empty = tmp_path / "empty"
    empty.mkdir()
    done = launch_two_cpu_processes(empty, tmp_path / "out", "--max-steps", "2", timeout=120)
    assert done.returncode != 0
    errors = re.findall(r"diffusion-train: error: (.*?)(?=diffusion-train: error: |\n)", done.stderr)
    assert len(errors) == 2 and errors[0] == errors[1], done.stderr[-3000:]
    assert errors[0].startswith(f"no image files found under {empty} "), errors[0]
    assert "[rank" not in done.stderr and not (tmp_path / "out").exists(), done.stderr[-3000:]
