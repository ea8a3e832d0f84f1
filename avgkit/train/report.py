"""What training tells the user: JSONL metrics, a progress display, the loss curve.

Only rank 0 creates these. The progress display is a tqdm bar (loss, lr, tokens/s,
ETA) when stderr is a terminal, and a plain line every ``log_every`` steps otherwise
(log files and CI stay readable).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from avgkit.io import atomic_write, atomic_write_text
from avgkit.runtime.progress import StepProgress


class MetricsLog:
    """Append-only ``metrics.jsonl``; on resume, records past the checkpoint are dropped."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def truncate_after(self, step: int) -> None:
        """Keep records with ``step <= step`` (those written before the resumed checkpoint)."""
        if not self.path.exists():
            return
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def reset(self) -> None:
        atomic_write_text(self.path, "")

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl``; a line cut short by a crash is skipped."""
    if not Path(path).exists():
        return []
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def format_rate(tokens_per_s: float) -> str:
    if tokens_per_s >= 1e6:
        return f"{tokens_per_s / 1e6:.2f}M"
    if tokens_per_s >= 1e3:
        return f"{tokens_per_s / 1e3:.1f}k"
    return f"{tokens_per_s:.0f}"


class Progress(StepProgress):
    """The AR trainer's progress: loss, learning rate, gradient norm and tokens/s of logged steps."""

    def __init__(self, total: int, initial: int, *, enabled: bool = True, stream: TextIO | None = None) -> None:
        super().__init__(total, initial, desc="train", enabled=enabled, stream=stream)

    def update(self, step: int, record: dict[str, Any] | None = None) -> None:  # type: ignore[override]
        values = None
        if record is not None:
            values = {"loss": f"{record['loss']:.4f}", "lr": f"{record['lr']:.2e}"}
            if self.bar is None:
                values["grad"] = f"{record['grad_norm']:.3f}"
            values["tok/s"] = format_rate(record["tokens_per_s"])
        super().update(step, values)


def plot_loss(records: Iterable[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """Write the loss curve as a PNG (matplotlib's Agg canvas, no global backend change)."""
    records = [r for r in records if "loss" in r and math.isfinite(r["loss"])]
    if not records:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = [r["step"] for r in records]
    losses = [r["loss"] for r in records]
    fig = Figure(figsize=(6, 3.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(steps, losses, lw=1.2, color="tab:blue", label="train loss")
    val = [(r["step"], r["val_loss"]) for r in records if math.isfinite(r.get("val_loss", math.nan))]
    if val:  # held-out codes: a gap that widens is memorisation
        ax.plot(*zip(*val, strict=True), lw=1.2, color="tab:orange", marker="o", ms=2.5, label="validation loss")
        ax.legend(fontsize=8, loc="upper right")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.15, top=0.9)  # fixed: tight_layout costs a redraw
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
