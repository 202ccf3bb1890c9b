"""A distilled model's folder: the sampling record in model_index.json and one weights file per trained step
count (`diffusion.io.model_folder`); folders without a record read as before."""

import json
import shutil
from fnmatch import fnmatch  # as huggingface_hub matches allow_patterns

import pytest
import torch
from safetensors.torch import save_file
from students import GUIDANCE_RANGE, STEPS, student_config, student_pipeline, student_unet

from diffusion import DiffusionPipeline
from diffusion.io.files import CorruptFolderError
from diffusion.io.model_folder import (
    _HUB_STEP_WEIGHTS,
    SHIPPED_MODEL,
    check_step_unets,
    read_model,
    read_model_folder,
    step_weights_name,
    write_model_folder,
)
from diffusion.io.sampling_record import SamplingRecord
from diffusion.models import UNet


def images(pipe: DiffusionPipeline, steps: int) -> torch.Tensor:
    return pipe(3, steps, seed=5, class_labels=[0, 1, 2], guidance_scale=2.0, output_type="tensor")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("student") / "model"
    student_pipeline().save_pretrained(path)
    return path


def test_a_student_folder_round_trips_its_record_weights_and_images(folder):
    pipe, loaded = student_pipeline(), DiffusionPipeline.from_pretrained(folder)
    assert loaded.sampling == SamplingRecord("progressive", STEPS, 4, GUIDANCE_RANGE)
    assert sorted(loaded.step_unets) == [1, 2] and loaded.default_steps == 4
    for n, unet in [(4, loaded.unet), *loaded.step_unets.items()]:
        original = pipe.step_unets.get(n, pipe.unet)
        for name, tensor in original.state_dict().items():
            assert torch.equal(unet.state_dict()[name], tensor), (n, name)
        assert unet.config == student_config() and not unet.training
    for n in STEPS:
        assert torch.equal(images(loaded, n), images(pipe, n)), n
    assert scheduler_settings(loaded) == scheduler_settings(pipe)


def scheduler_settings(pipe: DiffusionPipeline) -> tuple:
    c = pipe.scheduler.config
    return pipe.scheduler_name(), c.prediction_type, c.timestep_spacing, c.eta, c.set_alpha_to_one


def test_the_folder_lists_every_students_weights_and_the_record(folder):
    assert sorted(p.name for p in (folder / "unet").iterdir()) == [
        "config.json",
        "model-1steps.safetensors",
        "model-2steps.safetensors",
        "model.safetensors",
    ]
    manifest = json.loads((folder / "manifest.json").read_text())["files"]
    assert sorted(manifest) == [
        "unet/model-1steps.safetensors",
        "unet/model-2steps.safetensors",
        "unet/model.safetensors",
    ]
    assert (
        manifest["unet/model-2steps.safetensors"]["size"]
        == (folder / "unet" / "model-2steps.safetensors").stat().st_size
    )
    index = json.loads((folder / "model_index.json").read_text())
    assert index["sampling"] == {
        "method": "progressive",
        "steps": [1, 2, 4],
        "default_steps": 4,
        "guidance_range": [1, 4],
    }
    assert step_weights_name(8) == "model-8steps.safetensors"


def test_read_model_folder_still_gives_four_things_the_default_student_among_them(folder):
    unet, scheduler, class_names, background = read_model_folder(folder)
    assert torch.equal(unet.conv_in.weight, student_pipeline().unet.conv_in.weight)
    assert (class_names, background, type(scheduler).__name__) == (["a", "b", "c"], "white", "DDIMScheduler")


def test_a_folder_without_a_record_reads_as_before():
    index = json.loads((SHIPPED_MODEL / "model_index.json").read_text())
    assert "sampling" not in index
    parts = read_model(SHIPPED_MODEL)
    assert (parts.sampling, parts.step_unets) == (None, {})
    pipe = DiffusionPipeline.from_pretrained(SHIPPED_MODEL)
    assert (pipe.sampling, pipe.step_unets, pipe.default_steps) == (None, {}, 20)
    assert len(read_model_folder(SHIPPED_MODEL)) == 4


def copy_folder(folder, tmp_path):
    shutil.copytree(folder, tmp_path / "copy")
    return tmp_path / "copy"


def test_a_truncated_or_missing_students_weights_are_refused_in_one_line(folder, tmp_path):
    path = copy_folder(folder, tmp_path)
    weights = path / "unet" / "model-2steps.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CorruptFolderError, match=rf"^model folder {path} is damaged: {weights} is truncated"):
        DiffusionPipeline.from_pretrained(path)
    (path / "manifest.json").unlink()  # unchecked: the weights file itself is refused
    with pytest.raises(ValueError, match=rf"^{weights} is not a readable safetensors file"):
        DiffusionPipeline.from_pretrained(path)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=rf"^{weights} not found \(the 2-step student that model_index"):
        DiffusionPipeline.from_pretrained(path)


def test_a_bad_record_in_model_index_is_one_line_naming_the_file(folder, tmp_path):
    path = copy_folder(folder, tmp_path)
    index = json.loads((path / "model_index.json").read_text())
    index["sampling"]["default_steps"] = 3
    (path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=rf"^{path / 'model_index.json'}: sampling\.default_steps must be one of"):
        DiffusionPipeline.from_pretrained(path)


def test_students_that_do_not_match_the_record_are_refused(tmp_path):
    record = SamplingRecord("progressive", STEPS, 4, GUIDANCE_RANGE)
    default = student_unet(4)

    def write(**students):
        write_model_folder(tmp_path / "m", default, student_pipeline().scheduler, "ddim", [], **students)

    with pytest.raises(ValueError, match=r"^step_unets must hold one UNet for each trained step count but the default"):
        write(sampling=record, step_unets={1: student_unet(1)})
    with pytest.raises(ValueError, match=r"^step_unets need a sampling record"):
        write(step_unets={1: student_unet(1)})
    with pytest.raises(ValueError, match=r"^the 2-step UNet must be a UNet of the default UNet's config"):
        write(sampling=record, step_unets={1: student_unet(1), 2: student_unet(2, guided=False)})
    with pytest.raises(ValueError, match=r"^the sampling record gives a guidance range, but the UNet has no guidance"):
        check_step_unets(UNet(student_config(guided=False)), SamplingRecord("progressive", (4,), 4, (1.0, 2.0)), {})
    assert not (tmp_path / "m").exists()  # refused before anything is written


def test_a_hub_download_fetches_the_students_by_their_one_pattern():
    names = ["unet/model-1steps.safetensors", "unet/model-16steps.safetensors", "unet/model-4steps.fp16.safetensors"]
    assert [fnmatch(name, _HUB_STEP_WEIGHTS) for name in names] == [True, True, False]


def test_a_students_weights_of_another_config_are_refused_naming_the_file(folder, tmp_path):
    path = copy_folder(folder, tmp_path)
    (path / "manifest.json").unlink()
    weights = path / "unet" / "model-1steps.safetensors"
    save_file(student_unet(1, guided=False).state_dict(), weights)  # no guidance embedding
    with pytest.raises(ValueError, match=rf"^{weights}: weights do not match the model config: missing \['guidance"):
        DiffusionPipeline.from_pretrained(path)
