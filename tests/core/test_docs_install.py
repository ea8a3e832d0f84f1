"""The install instructions: a CPU-only line before avgkit's own, in the README and the docs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CPU = "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu"


def test_cpu_install_line_comes_before_avgkit():
    for page in (ROOT / "README.md", ROOT / "docs" / "index.md"):
        text = page.read_text()
        assert CPU in text, f"{page.name} lacks the CPU-only install line"
        assert text.index(CPU) < text.index('pip install -e ".[all]"'), f"{page.name}: torch (CPU) must come first"


def test_nox_can_install_the_cpu_build():
    noxfile = (ROOT / "noxfile.py").read_text()
    assert 'os.environ.get("AVGKIT_TORCH_INDEX")' in noxfile and "AVGKIT_TORCH_INDEX=" in (ROOT / "README.md").read_text()
