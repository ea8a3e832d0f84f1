"""Install avgkit and its plugins as users do (wheels, not editable) and use them from there.

Builds the wheels of the core and every plugin, installs them into a fresh virtual
environment whose only other packages are this environment's third-party ones (a path
file points at them, so torch is neither downloaded nor copied again), then, from a
folder outside the checkout so nothing imports the sources: lists the packaged recipes,
builds the digits recipe on the meta device, and runs the plugins' conformance suites.

    python .ci/check_wheels.py [WORK_DIR]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECTS = [ROOT] + sorted(p.parent for p in (ROOT / "plugins").glob("*/pyproject.toml"))


def run(*cmd: str | Path, cwd: Path | None = None, capture: bool = False) -> str:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, check=False, text=True,
                         stdout=subprocess.PIPE if capture else None, stderr=subprocess.STDOUT if capture else None)
    if out.returncode:
        sys.exit(f"check_wheels: {' '.join(str(c) for c in cmd)} exited {out.returncode}\n{out.stdout or ''}")
    return out.stdout or ""


def main() -> None:
    start = time.perf_counter()
    work = (Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="avgkit-wheels-"))).resolve()
    shutil.rmtree(work, ignore_errors=True)
    dist, env, outside = work / "dist", work / "env", work / "elsewhere"
    outside.mkdir(parents=True)
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, *PROJECTS)
    wheels = sorted(dist.glob("*.whl"))
    assert len(wheels) == len(PROJECTS), wheels
    run(sys.executable, "-m", "venv", "--without-pip", env)
    python = env / "bin" / "python"
    fresh_site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                          capture=True).strip())
    # this environment's third-party packages, after the fresh ones; its own editable avgkit
    # stays invisible (a plain path entry: the .pth files that install it are not read)
    (fresh_site / "third_party.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", *wheels)
    where = run(python, "-c", "import avgkit, avgkit_mamba; print(avgkit.__file__, avgkit_mamba.__file__)",
                cwd=outside, capture=True)
    assert all(Path(f).is_relative_to(fresh_site) for f in where.split()), f"not the installed wheels: {where}"
    recipes = run(env / "bin" / "avgkit", "recipes", "ls", cwd=outside, capture=True)
    assert "digits" in recipes and "aim-b" in recipes, recipes
    dry = run(env / "bin" / "avgkit", "train", "digits", "--dry-run", cwd=outside, capture=True)
    print(dry.strip().splitlines()[-1] if dry.strip() else dry)
    suites = sorted(str(p) for p in (ROOT / "plugins").glob("*/tests/*conformance*.py"))
    run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", *suites, cwd=outside)
    print(f"check_wheels: {len(wheels)} wheels installed and used in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
