"""The import rules the README's Layout states, read from the source with `ast`."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "diffusion"

# Lowest first. A module may import only from its own layer or below; models and schedulers share
# a layer but never import each other. `evaluation` puts pipeline, data and metrics together, so it
# sits beside training; `evaluate` is only the `python -m diffusion.evaluate` entry point, which
# calls the CLI, so it sits above it, where train.py and sample.py would be if they were modules.
LAYERS = [
    {
        "diffusion.config",
        "diffusion.io.files",
        "diffusion.io.weights",
        "diffusion.io",
        "diffusion.rng",
        "diffusion.image",
        "diffusion.guidance",
    },
    {"diffusion.models", "diffusion.schedulers"},
    {
        "diffusion.pipeline",
        "diffusion.denoiser",
        "diffusion.sampling",
        "diffusion.request",
        "diffusion.io.checkpoint",
        "diffusion.data",
        "diffusion.metrics.classifier",
        "diffusion.metrics.distances",
        "diffusion.metrics.features",
        "diffusion.metrics",
        "diffusion.io.diffusers_folder",
        "diffusion.editing",
        "diffusion.io.model_folder",
        "diffusion.latents",
        "diffusion.latent_calls",
        "diffusion.arguments",
    },
    {"diffusion.training", "diffusion.metrics.evaluation", "diffusion.evaluation", "diffusion.app"},
    {"diffusion.cli"},
    {"diffusion.evaluate", "diffusion.prepare", "diffusion.app.__main__"},
]


def module_name(path: Path, root: Path = PACKAGE.parent) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path = PACKAGE.parent) -> set[str]:
    """Absolute names of everything ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            name = ".".join([*base, node.module] if node.module else base)
            found.add(name)
            found |= {f"{name}.{alias.name}" for alias in node.names}
    return found


def layer_of(name: str) -> int | None:
    """The layer of the longest entry of `LAYERS` that is ``name`` or a package above it."""
    matches = [
        (len(top), i) for i, layer in enumerate(LAYERS) for top in layer if name == top or name.startswith(top + ".")
    ]
    return max(matches)[1] if matches else None


def top_component(name: str) -> str:
    return ".".join(name.split(".")[:2])


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_belongs_to_a_layer():
    orphans = [module_name(p) for p in SOURCES if p.name != "__init__.py" or p.parent != PACKAGE]
    orphans = [m for m in orphans if layer_of(m) is None]
    assert orphans == []


def layering_violations(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    """Imports of ``path`` that point to a higher layer, or between models and schedulers."""
    me = module_name(path, root)
    if me == "diffusion":
        return []  # the package root re-exports the public API
    mine = layer_of(me)
    bad = []
    for name in imports(path, root):
        theirs = layer_of(name)
        sideways = {top_component(me), top_component(name)} == {"diffusion.models", "diffusion.schedulers"}
        if theirs is not None and (theirs > mine or sideways):
            bad.append(name)
    return sorted(bad)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_imports_point_downwards(path):
    assert layering_violations(path) == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_only_cli_parses_arguments_or_prints(path):
    if module_name(path) == "diffusion.cli" or module_name(path).startswith("diffusion.cli."):
        return
    names = imports(path)
    assert "argparse" not in names and "sys.argv" not in path.read_text(encoding="utf-8")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    prints = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "print"]
    assert prints == [], f"library code logs instead of printing (lines {prints})"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_library_never_seeds_global_randomness(path):
    fresh_generators = re.sub(r"Generator\([^()]*\)\.manual_seed\(", "", path.read_text(encoding="utf-8"))
    assert "manual_seed(" not in fresh_generators


def test_rules_catch_a_violation(tmp_path):
    """The checker itself: a model importing a scheduler, or the CLI, is flagged."""
    fake = tmp_path / "diffusion" / "models" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(
        "import torch\nfrom ..schedulers import DDIMScheduler\nfrom ..cli import main\nfrom .unet import UNet\n"
    )
    assert layering_violations(fake, tmp_path) == [
        "diffusion.cli",
        "diffusion.cli.main",
        "diffusion.schedulers",
        "diffusion.schedulers.DDIMScheduler",
    ]


def test_sampling_does_not_import_the_trainer():
    """sample.py's start-up is part of its wall time: accelerate is for training only."""
    code = "import sys, diffusion.cli; diffusion.cli.sample_main; print(sorted({m.split('.')[0] for m in sys.modules}))"
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert "'torch'" in loaded
    assert "'accelerate'" not in loaded
