"""What `read_model_folder` reads besides our model folders: training checkpoints and Hugging Face Hub
ids (the cache laid out by hand in tmp_path; nothing ever goes to the network)."""

import errno
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from diffusion import DiffusionPipeline, cli
from diffusion.checkpoint import list_checkpoints
from diffusion.model_folder import CHECKPOINT_SAMPLER, read_model_folder
from diffusion.models import UNet, UNetConfig
from diffusion.schedulers import DDIMScheduler
from diffusion.training import TrainConfig, Trainer
from diffusion.training.config import scheduler_config

sys.path.insert(0, str(Path(__file__).parent / "training"))
from test_trainer import TINY, make_images  # the trainer tests' tiny run, kept once
from test_trainer import config as train_config


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection attempt fails the test at once."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ----- training checkpoints -----


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Two class-conditional tiny runs on the same data: ``long`` (4 steps, checkpoints at 2 and 4) and
    ``short`` (the same settings, ending at step 2)."""
    root = tmp_path_factory.mktemp("runs")
    make_images(root / "data")
    Trainer(train_config(root, "long", class_cond=True, max_steps=4, checkpoint_every=2), TINY).train()
    Trainer(train_config(root, "short", class_cond=True, max_steps=2, checkpoint_every=2), TINY).train()
    return root


def images(pipe: DiffusionPipeline) -> torch.Tensor:
    return pipe(4, 3, seed=7, class_labels=["cats", "dogs", "cats", "dogs"], output_type="tensor")


@pytest.mark.parametrize("run, step, model", [("long", 4, "long"), ("long", 2, "short")])
def test_a_checkpoint_samples_as_the_model_a_run_ending_there_writes(runs, run, step, model):
    checkpoint = dict(list_checkpoints(runs / run))[step]
    ours = DiffusionPipeline.from_pretrained(checkpoint)
    final = DiffusionPipeline.from_pretrained(runs / model / "model")
    assert ours.class_names == final.class_names == ["cats", "dogs"]
    assert ours.scheduler_name() == final.scheduler_name() == "dpmsolver++3m-sde"
    assert ours.scheduler.config == final.scheduler.config and ours.unet.config == final.unet.config
    torch.testing.assert_close(images(ours), images(final), rtol=0, atol=0)  # the same weights: bit for bit


def test_sample_and_export_take_a_checkpoint(runs, tmp_path, capsys):
    checkpoint = runs / "long" / "checkpoints" / "step-4"
    out = tmp_path / "samples"
    argv = ["--model", str(checkpoint), "--num-images", "2", "--steps", "2", "--out", str(out)]
    assert cli.sample_main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0.png", "1.png"]
    # --to pixel-diffusion: an ordinary model folder, byte for byte the one the run wrote at that step (which
    # also holds the run's own extras, such as a model card).
    folder = tmp_path / "model"
    assert cli.export_main(["--model", str(checkpoint), "--to", "pixel-diffusion", "--out", str(folder)]) == 0
    assert f"wrote {folder}/ (dpmsolver++3m-sde)" in capsys.readouterr().out
    final = runs / "long" / "model"
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert names == [
        "manifest.json", "model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
        "unet/model.safetensors",
    ]  # fmt: skip
    for name in names:
        assert (folder / name).read_bytes() == (final / name).read_bytes(), name
    # --to diffusers: the default sampler is exported as its nearest, and the class names come back.
    hf = tmp_path / "hf"
    assert cli.export_main(["--model", str(checkpoint), "--to", "diffusers", "--out", str(hf)]) == 0
    assert "exporting dpmsolver++2m-sde" in capsys.readouterr().out
    assert DiffusionPipeline.from_pretrained(hf).class_names == ["cats", "dogs"]


def test_the_checkpoint_sampler_is_the_trainers(tmp_path):
    """model_folder cannot import training (a higher layer), so it builds the trainer's default sampler
    itself: the two must agree for every schedule setting a run can change."""
    run = TrainConfig(
        data="d", out="o", num_train_timesteps=500, beta_schedule="cosine", zero_terminal_snr=True,
        prediction_type="v_prediction",
    )  # fmt: skip
    unet = UNet(UNetConfig(in_channels=1, sample_size=(8, 8), base_channels=16, channel_mult=(1, 2), norm_groups=8))
    ema = {n: p.detach().clone() for n, p in unet.named_parameters()} | {"__num_updates__": torch.tensor(3)}
    save_file(ema, tmp_path / "ema.safetensors")
    state = {"step": 3, "config": run.to_dict(), "unet": unet.config.to_dict(), "class_names": []}
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))  # no manifest: an older checkpoint
    _, scheduler, _ = read_model_folder(tmp_path)
    assert scheduler.config == scheduler_config(run) and CHECKPOINT_SAMPLER == "dpmsolver++3m-sde"


def test_a_damaged_or_foreign_checkpoint_is_one_clear_error(runs, tmp_path):
    checkpoint = tmp_path / "step-4"
    shutil.copytree(runs / "long" / "checkpoints" / "step-4", checkpoint)
    ema = checkpoint / "ema.safetensors"
    ema.write_bytes(ema.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"checkpoint .*step-4 is damaged: .*ema.safetensors is truncated"):
        DiffusionPipeline.from_pretrained(checkpoint)
    # Without a manifest (as written before manifests existed) it is read as it is.
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    (checkpoint / "trainer_state.json").write_text(json.dumps(state | {"manifest": False}))
    (checkpoint / "manifest.json").unlink()
    with pytest.raises(ValueError, match=r"ema.safetensors is not a readable safetensors file"):
        DiffusionPipeline.from_pretrained(checkpoint)
    del state["unet"]
    (checkpoint / "trainer_state.json").write_text(json.dumps(state | {"manifest": False}))
    with pytest.raises(ValueError, match=r"trainer_state.json has no 'unet' setting; it does not describe a model"):
        DiffusionPipeline.from_pretrained(checkpoint)


def test_a_run_folder_points_to_its_model(runs):
    with pytest.raises(ValueError, match=r"long is not a model folder .*a training run's model is .*long/model"):
        DiffusionPipeline.from_pretrained(runs / "long")


def test_reading_a_checkpoint_does_not_import_accelerate(runs):
    code = (
        "import sys; from diffusion.model_folder import read_model_folder; "
        f"read_model_folder({str(runs / 'long' / 'checkpoints' / 'step-2')!r}); "
        "print('accelerate' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout == "False\n"


# ----- Hugging Face Hub ids -----

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(root: Path, repo_id: str, folder: Path) -> Path:
    """The Hugging Face cache layout of ``repo_id`` at one commit, holding ``folder``'s files."""
    owner, name = repo_id.split("/")
    repo = root / f"models--{owner}--{name}"
    snapshot = repo / "snapshots" / COMMIT
    for file in folder.rglob("*"):
        if file.is_file():
            (snapshot / file.relative_to(folder)).parent.mkdir(parents=True, exist_ok=True)
            (snapshot / file.relative_to(folder)).write_bytes(file.read_bytes())
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture
def exported(tmp_path) -> tuple[DiffusionPipeline, Path]:
    """A class-conditional tiny model exported for diffusers."""
    torch.manual_seed(0)
    config = UNetConfig(
        in_channels=1, sample_size=(8, 8), base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
        attention_levels=(), norm_groups=8, num_classes=2,
    )  # fmt: skip
    pipe = DiffusionPipeline(UNet(config), DDIMScheduler(), ["shoe", "bag"])
    pipe.save_pretrained(tmp_path / "ours")
    assert cli.export_main(["--model", str(tmp_path / "ours"), "--to", "diffusers", "--out", str(tmp_path / "hf")]) == 0
    return pipe, tmp_path / "hf"


@pytest.mark.parametrize("variable", ["HF_HUB_CACHE", "HF_HOME"])
def test_a_hub_id_loads_from_the_cache_offline(exported, tmp_path, monkeypatch, variable):
    pipe, folder = exported
    cache = tmp_path / "home" / "hub" if variable == "HF_HOME" else tmp_path / "cache"
    hub_cache(cache, "someone/tiny-ddpm", folder)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv(variable, str(tmp_path / "home" if variable == "HF_HOME" else cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # no local folder someone/tiny-ddpm
    back = DiffusionPipeline.from_pretrained("someone/tiny-ddpm")
    assert back.class_names == ["shoe", "bag"]
    torch.testing.assert_close(
        back(2, 3, seed=1, class_labels=["bag", "shoe"], output_type="tensor"),
        pipe(2, 3, seed=1, class_labels=["bag", "shoe"], output_type="tensor"),
        rtol=0,
        atol=0,
    )
    # sample.py's --model goes through from_pretrained: a hub id works there too.
    out = tmp_path / "out"
    assert (
        cli.sample_main(["--model", "someone/tiny-ddpm", "--num-images", "1", "--steps", "2", "--out", str(out)]) == 0
    )
    assert [p.name for p in out.iterdir()] == ["0.png"]


def test_a_hub_id_not_in_the_cache_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    message = (
        r"model folder google/ddpm-cifar10-32 not found, and the Hub model google/ddpm-cifar10-32 is not in the "
        r"Hugging Face cache \(.*cache\) while HF_HUB_OFFLINE is set: get it with "
        r"`hf download google/ddpm-cifar10-32 --local-dir DIR` where the hub is reachable and pass DIR"
    )
    with pytest.raises(FileNotFoundError, match=message):
        DiffusionPipeline.from_pretrained("google/ddpm-cifar10-32")
    assert cli.export_main(["--model", "google/ddpm-cifar10-32", "--to", "diffusers", "--out", "hf"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hf download google/ddpm-cifar10-32 --local-dir DIR" in err[0]
    assert not (tmp_path / "hf").exists()
    # Not a hub id (three parts): the plain message, and nothing is asked of the hub.
    with pytest.raises(FileNotFoundError, match=r"^model folder runs/mine/model not found$"):
        DiffusionPipeline.from_pretrained("runs/mine/model")


def test_online_a_hub_id_is_downloaded_with_its_configs_and_weights_only(exported, tmp_path, monkeypatch):
    """Online, from_pretrained asks huggingface_hub for the snapshot (faked here: no network in tests)."""
    import huggingface_hub

    _, folder = exported
    calls = []

    def snapshot_download(repo_id, cache_dir, local_files_only, allow_patterns):
        calls.append((repo_id, local_files_only, allow_patterns))
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert DiffusionPipeline.from_pretrained("someone/tiny-ddpm").class_names == ["shoe", "bag"]
    assert calls == [("someone/tiny-ddpm", False, ["*.json", "unet/*.safetensors"])]


def test_a_hub_id_loads_from_the_cache_when_the_hub_cannot_be_reached(exported, tmp_path, monkeypatch):
    """Online mode, but every connection fails at once (as on a machine without network): huggingface_hub
    falls back to the cache, and a model not in it is the one-line message."""
    import huggingface_hub

    def unreachable(*args, **kwargs):
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    for name in ("getaddrinfo", "create_connection"):
        monkeypatch.setattr(socket, name, unreachable)
    monkeypatch.setattr(socket.socket, "connect", unreachable)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    hub_cache(tmp_path / "cache", "someone/tiny-ddpm", exported[1])
    assert DiffusionPipeline.from_pretrained("someone/tiny-ddpm").class_names == ["shoe", "bag"]
    with pytest.raises(FileNotFoundError, match=r"not in the Hugging Face cache .* while the Hugging Face Hub cannot"):
        DiffusionPipeline.from_pretrained("someone/other")
