"""The example plugin of docs/plugins.md installs, registers, passes its own tests and trains.

The example is pip-installed (no dependencies) into a folder of its own that only this
module's subprocesses see on their PYTHONPATH, so the shared environment (and tests
running beside these) never sees a half-installed plugin. Every avgkit command runs in
a subprocess, exactly as a user would run it, with the other installed plugins
disabled so that only the example is under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "minimal_plugin"
PLUGIN = "window-mlp"


_SITE: list[Path] = []  # the private install folder, once made


def _env() -> dict[str, str]:
    others = {ep.name for ep in metadata.entry_points(group="avgkit")} - {PLUGIN}
    env = {**os.environ, "AVGKIT_DISABLE_PLUGINS": ",".join(sorted(others)), "PYTHONUNBUFFERED": "1"}
    if _SITE:
        env["PYTHONPATH"] = os.pathsep.join([str(_SITE[0]), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _run(*args: str, cwd: Path | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _avgkit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return _run(sys.executable, "-c", "from avgkit.cli.app import main; main()", *args, cwd=cwd)


@pytest.fixture(scope="module")
def example_installed(tmp_path_factory):
    site = tmp_path_factory.mktemp("example-site")
    pip = _run(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
               "--disable-pip-version-check", "--target", str(site), str(EXAMPLE), timeout=300)
    assert pip.returncode == 0, f"pip install of the example failed:\n{pip.stdout}\n{pip.stderr}"
    _SITE[:] = [site]
    yield site
    _SITE.clear()


def test_listed_by_avgkit_plugins(example_installed):
    out = _avgkit("plugins", "--json")
    assert out.returncode == 0, out.stderr
    infos = {i["name"]: i for i in json.loads(out.stdout)}
    assert PLUGIN in infos, f"example plugin missing from `avgkit plugins --json`: {sorted(infos)}"
    info = infos[PLUGIN]
    assert info["module"] == "avgkit_window_mlp.plugin" and info["version"] == "0.1.0"
    assert info["registers"] == {"backbone": ["window-mlp"]}
    recipe = _avgkit("recipes", "show", "window-mlp-digits")  # found through the plugin's avgkit_recipe_dirs
    assert recipe.returncode == 0 and "name: window-mlp" in recipe.stdout, recipe.stderr


def test_own_tests_pass(example_installed):
    out = _run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests"), timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]


def test_trains_from_its_recipe(example_installed, tmp_path):
    try:
        from avgkit.train.pipeline import run_recipe  # noqa: F401
    except ImportError as err:
        pytest.skip(f"the training engine (avgkit.train.pipeline) is not available: {err}")
    run_dir = tmp_path / "run"
    out = _avgkit(
        "train", "window-mlp-digits", "train.steps=4", "train.batch_size=16", "train.log_every=2",
        "train.ckpt_every=4", "train.device=cpu", "eval.samples_per_class=1", "eval.batch_size=10",
        "eval.classifier=none", f"output_dir={run_dir}", cwd=tmp_path,
    )
    assert out.returncode == 0, f"avgkit train failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    assert (run_dir / "recipe.yaml").is_file()
    assert any((run_dir / "checkpoints").iterdir()), "no checkpoint was written"
    record = json.loads((run_dir / "eval.json").read_text())
    assert record["step"] == 4 and record["samples"] >= 1
    plugins = {p["name"] for p in json.loads((run_dir / "plugins.json").read_text())}
    assert PLUGIN in plugins
