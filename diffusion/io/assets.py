"""Where the shipped models are, in a wheel install and in a source checkout.

The model folders live in the repository's ``assets/`` (the README and the model cards link there).
pyproject.toml maps the package ``diffusion._assets`` to that folder, so a wheel installs them as package
data, ``diffusion/_assets/NAME``; a source checkout (an editable install, or ``python sample.py`` from the
repository root without installing) has them in ``assets/`` beside the package. Nothing is downloaded.
"""

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]  # the folder of the `diffusion` package


def assets_root(package: Path = PACKAGE) -> Path:
    """The shipped models' folder for the `diffusion` package in ``package``: its package data where a wheel
    installed it, else the source checkout's ``assets/`` (neither: the package data's place, for messages).

    A checkout is a folder with ``pyproject.toml`` beside the package: the ``assets/`` beside a package
    installed in site-packages belongs to whatever other distribution put it there."""
    installed, checkout = package / "_assets", package.parent / "assets"
    in_checkout = checkout.is_dir() and (package.parent / "pyproject.toml").is_file()
    return checkout if in_checkout and not installed.is_dir() else installed


ASSETS = assets_root()
