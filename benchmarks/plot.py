"""Plots of committed benchmark results: ``python benchmarks/plot.py`` -> benchmarks/results/*.png."""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

RESULTS = Path(__file__).resolve().parent / "results"


def sampling(path: Path = RESULTS / "sampling_h200.json") -> Path | None:
    if not path.exists():
        return None
    rows = json.loads(path.read_text())["rows"]
    fig = Figure(figsize=(8, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    labels = [f"{r['model']} b{r['batch']}" for r in rows]
    speed = [r["images_per_s"] for r in rows]
    floor = [r.get("floor_images_per_s") or 0 for r in rows]
    y = range(len(rows))
    ax.barh([i + 0.2 for i in y], floor, height=0.4, color="lightgray", label="memory floor of the state layout")
    ax.barh([i - 0.2 for i in y], speed, height=0.4, color="tab:blue", label="measured")
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("images / s (256 tokens, CFG 2, bf16 weights, one H200)")
    ax.legend(fontsize=7)
    fig.subplots_adjust(left=0.38, right=0.97, bottom=0.12, top=0.97)
    out = RESULTS / "sampling_h200.png"
    fig.savefig(out)
    return out


if __name__ == "__main__":
    print(sampling())
