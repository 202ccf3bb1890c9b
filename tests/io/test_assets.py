"""`diffusion.io.assets`: the shipped models are found in a wheel's package data and in a source checkout,
and pyproject.toml puts them, and nothing else of assets/, into the wheel."""

import json
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from setuptools import find_namespace_packages

from diffusion import __version__
from diffusion.io.assets import ASSETS, assets_root
from diffusion.io.model_folder import SHIPPED_MODELS
from diffusion.metrics.features import SHIPPED_CLASSIFIER

ROOT = Path(__file__).resolve().parents[2]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
# The package-data file types of a model folder (pyproject.toml's globs).
SHIPPED_SUFFIXES = {".json", ".safetensors", ".md", ".png"}


def make_folders(root: Path, *folders: str) -> None:
    for folder in folders:
        (root / folder).mkdir(parents=True)


def test_an_installed_wheel_reads_its_package_data(tmp_path):
    site = tmp_path / "site-packages"
    # assets/ beside the package: another distribution's top-level folder, never ours.
    make_folders(site, "diffusion/_assets/fashion-mnist", "assets/fashion-mnist")
    assert assets_root(site / "diffusion") == site / "diffusion" / "_assets"


def test_a_source_checkout_reads_assets_beside_the_package(tmp_path):
    make_folders(tmp_path / "checkout", "diffusion/io", "assets/fashion-mnist")
    (tmp_path / "checkout" / "pyproject.toml").write_text("[project]\nname = 'pixel-diffusion'\n")
    assert assets_root(tmp_path / "checkout" / "diffusion") == tmp_path / "checkout" / "assets"


def test_a_wheel_without_package_data_never_takes_another_distributions_assets_folder(tmp_path):
    site = tmp_path / "site-packages"
    make_folders(site, "diffusion/io", "assets/fashion-mnist")  # no diffusion/_assets, no pyproject.toml
    assert assets_root(site / "diffusion") == site / "diffusion" / "_assets"


def test_without_either_the_package_datas_place_is_named(tmp_path):
    make_folders(tmp_path / "site-packages", "diffusion/io")
    assert assets_root(tmp_path / "site-packages" / "diffusion") == tmp_path / "site-packages" / "diffusion" / "_assets"


def test_this_checkout_finds_the_models_in_its_assets_folder():
    assert ASSETS == ROOT / "assets"
    assert SHIPPED_MODELS["fashion-mnist"] == ROOT / "assets" / "fashion-mnist"
    assert SHIPPED_CLASSIFIER == ROOT / "assets" / "fashion-mnist-classifier"
    assert (SHIPPED_MODELS["fashion-mnist"] / "model_index.json").is_file()


def test_pyproject_lists_every_package_and_maps_the_assets():
    found = find_namespace_packages(where=str(ROOT), include=["diffusion", "diffusion.*"])
    assert sorted(SETUPTOOLS["packages"]) == sorted([*found, "diffusion._assets"])
    assert SETUPTOOLS["package-dir"] == {"diffusion._assets": "assets"}
    globbed = {pattern.split("/")[0] for pattern in SETUPTOOLS["package-data"]["diffusion._assets"]}
    assert globbed == {*SHIPPED_MODELS, SHIPPED_CLASSIFIER.name}  # the model folders; never assets/readme


def shipped_files() -> dict[str, Path]:
    """The wheel path of every shipped file whose source folder exists: noto-emoji only once it is copied in."""
    folders = [folder for folder in [*SHIPPED_MODELS.values(), SHIPPED_CLASSIFIER] if folder.is_dir()]
    return {
        f"diffusion/_assets/{path.relative_to(ASSETS).as_posix()}": path
        for folder in folders
        for path in folder.rglob("*")
        if path.is_file() and path.suffix in SHIPPED_SUFFIXES
    }


@pytest.mark.slow
def test_the_wheel_ships_the_models_as_package_data_and_an_install_finds_them(tmp_path):
    offline = os.environ | {"PIP_NO_INDEX": "1"}
    command = [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-w", str(tmp_path)]
    subprocess.run(command, cwd=ROOT, env=offline, check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("pixel_diffusion-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        sizes = {info.filename: info.file_size for info in archive.infolist()}
        archive.extractall(tmp_path / "site-packages")
    expected = shipped_files()
    for name in [
        "diffusion/_assets/fashion-mnist/model_index.json",
        "diffusion/_assets/fashion-mnist/unet/model.safetensors",
        "diffusion/_assets/fashion-mnist-classifier/model.safetensors",
    ]:
        assert name in expected
    assert {name: sizes.get(name) for name in expected} == {
        name: path.stat().st_size for name, path in expected.items()
    }
    assets = sorted(name for name in sizes if name.startswith("diffusion/_assets/"))
    assert assets == sorted(expected)  # nothing else of assets/: not its readme/ pictures
    tops = {name.split("/")[0] for name in sizes}
    assert tops == {"diffusion", f"pixel_diffusion-{__version__}.dist-info"}  # no tests/, runs/, bench/ or assets/
    assert wheel.stat().st_size < 40 * 2**20 and sum(sizes.values()) < 40 * 2**20
    # The unpacked wheel as site-packages, run from elsewhere: the model is found in the package data.
    read = (
        f"import sys; sys.path.insert(0, {str(tmp_path / 'site-packages')!r}); "
        "from diffusion.io.model_folder import SHIPPED_MODELS, read_model_folder; "
        "print(SHIPPED_MODELS['fashion-mnist']); print(read_model_folder('fashion-mnist')[2])"
    )
    process = subprocess.run(
        [sys.executable, "-c", read], cwd=tmp_path, capture_output=True, text=True, check=True, timeout=120
    )
    folder, class_names = process.stdout.splitlines()
    assert folder == str(tmp_path / "site-packages" / "diffusion" / "_assets" / "fashion-mnist")
    assert class_names == str(json.loads((ASSETS / "fashion-mnist" / "model_index.json").read_text())["class_names"])
