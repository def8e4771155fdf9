"""The container recipe and the shell scripts, checked without apptainer.

No apptainer can be installed here, so the recipe is proved the ways that can be done in the
test suite: spython parses it, its shell sections pass shellcheck (as the POSIX sh apptainer
runs them with), and it packs what the package needs. ``bench/singularity_chroot_check.sh``
runs its ``%post`` and ``%test`` in a debootstrap chroot (too slow for the suite).
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from spython.main.parse.parsers import SingularityParser

from bids_dl import __version__

ROOT = Path(__file__).parents[1]
RECIPE = ROOT / "Singularity.def"
SHELLCHECK = shutil.which("shellcheck")
needs_shellcheck = pytest.mark.skipif(
    SHELLCHECK is None and os.environ.get("BIDS_DL_REQUIRE_SHELLCHECK") != "1",
    reason="shellcheck is not installed (apt-get install shellcheck)",
)
#: Shell sections, and the shell apptainer runs or sources each with.
SHELL_SECTIONS = ("post", "environment", "runscript", "test")
BASH_SCRIPTS = (
    ".ci/run",
    ".ci/start_slurm.sh",
    ".ci/stop_slurm.sh",
    "bench/gpu_device.sh",
    "bench/singularity_chroot_check.sh",
    "bench/slurm_array_check.sh",
)


class DefinitionParser(SingularityParser):
    """spython's parser, minus its refusal of any header but ``Bootstrap: docker``."""

    def _check_bootstrap(self, line):
        pass


def sections(text: str) -> dict[str, str]:
    """The recipe's sections verbatim, split as apptainer does (a line starting with %)."""
    found: dict[str, list[str]] = {}
    name = None
    for line in text.splitlines():
        words = line.split()
        if words and words[0].startswith("%"):
            name = words[0][1:].lower()
            found.setdefault(name, [])
        elif name is not None:
            found[name].append(line)
    return {key: "\n".join(lines).strip("\n") + "\n" for key, lines in found.items()}


@pytest.fixture(scope="module")
def recipe():
    return DefinitionParser(str(RECIPE)).recipe["spython-base"]


def test_spython_parses_the_recipe(recipe):
    assert recipe.cmd.strip() == 'exec bids_dl "$@"'
    labels = dict(line.split(None, 1) for line in recipe.labels)
    assert labels["Version"] == __version__
    assert labels["org.opencontainers.image.version"] == __version__
    assert any("--nv" in comment for comment in recipe.comments)  # %help
    environment = "\n".join(recipe.environ)
    for variable in ("MPLCONFIGDIR", "XDG_CACHE_HOME", "DENO_DIR", "NIPYPE_NO_ET"):
        assert variable in environment
    assert "HOME=" not in environment.replace("_HOME=", "")  # never redirects $HOME itself
    assert any("pip install" in line and "torch==2.13.*" in line for line in recipe.install)


def test_recipe_bootstraps_what_the_chroot_check_reproduces():
    header = RECIPE.read_text().split("%", 1)[0]
    assert "Bootstrap: debootstrap" in header and "OSVersion: bookworm" in header


def test_recipe_packs_every_installed_package_folder(recipe):
    copied = {line.split()[0] for line in recipe.files}
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    package_dirs = {
        line.split("=")[1].strip().split("/")[0]
        for line in setup["options"]["package_dir"].strip().splitlines()
    }
    assert package_dirs <= copied and {"setup.cfg", "pyproject.toml", "README.md"} <= copied
    assert all((ROOT / source).exists() for source in copied)
    assert (ROOT / "models" / "zoo").is_dir()  # the shipped bundles travel inside models/


@needs_shellcheck
@pytest.mark.parametrize("section", SHELL_SECTIONS)
def test_recipe_shell_sections_pass_shellcheck(section, tmp_path):
    body = sections(RECIPE.read_text())[section]
    script = tmp_path / f"{section}.sh"
    script.write_text(body)
    result = subprocess.run(
        [SHELLCHECK or "shellcheck", "--shell=sh", str(script)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


@needs_shellcheck
@pytest.mark.parametrize("script", BASH_SCRIPTS)
def test_scripts_pass_shellcheck(script):
    result = subprocess.run(
        [SHELLCHECK or "shellcheck", str(ROOT / script)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout
