"""Scores of a run's final samples, chosen by the recipe's ``eval.classifier``.

A scorer says which labels to sample (``labels``) and what the samples are worth
(``score``); the training pipeline only asks for one by name, so a new evaluator is a new
entry here, not a branch in the pipeline.

A scorer of a text-conditioned run (``conditions = "text"``) names its own prompts
(``prompts``): its labels index them, so it can sample captions the run never trained
on. ``cfg_scales`` may ask for samples at more than the recipe's guidance scale.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from avgkit.errors import AvgkitError

#: How eval.json, the summary and the grids name a set of weights.
WEIGHTS_NAMES = {"ema": "EMA weights", "model": "raw weights"}
#: A scorer's ``conditions`` in words.
CONDITIONED = {"class": "class-conditional", "text": "text-conditioned"}


def run_conditions(text: bool) -> str:
    """The ``conditions`` a scorer of a run needs: ``text`` for a text-conditioned run, else ``class``."""
    return "text" if text else "class"


class SampleScorer(Protocol):
    #: recorded in eval.json as ``classifier``
    description: str
    #: the summary's words for the headline score
    title: str
    #: the headline score's key in :meth:`score`
    headline: str
    #: what the labels are: ``class`` ids, or indices of :meth:`prompts` (``text``)
    conditions: str

    def labels(self, num_classes: int, per_class: int, grid_classes: int) -> Tensor:
        """The labels to sample (all classes: a score needs every one)."""
        ...

    def prompts(self) -> list[str] | None:
        """A text scorer's prompts (its labels index them); ``None`` for class ids."""
        ...

    def cfg_scales(self, recipe_scale: float | None) -> list[float | None]:
        """The guidance scales to sample at; the recipe's (``None``: the sampler's own) is the last."""
        ...

    def grid_rows(self, labels: Tensor, rows: int) -> list[int]:
        """The labels shown in ``samples.png``, one row each, in order."""
        ...

    def row_names(self, names: list[str]) -> list[str]:
        """The names written beside the rows (``names``: the class names or prompts)."""
        ...

    def check_data(self, description: dict[str, Any]) -> None:
        """Refuse training data (a source's ``describe()``) the scorer cannot judge."""
        ...

    def score(self, images: Tensor, labels: Tensor) -> dict[str, Any]:
        ...

    def summary(self, record: dict[str, Any]) -> list[str]:
        """The run summary's lines for ``eval.json``'s record."""
        ...


class ScorerBase:
    """Defaults: class labels, one guidance scale (the recipe's), the first classes in the grid."""

    description = title = headline = ""
    conditions = "class"

    def prompts(self) -> list[str] | None:
        return None

    def cfg_scales(self, recipe_scale: float | None) -> list[float | None]:
        return [recipe_scale]

    def grid_rows(self, labels: Tensor, rows: int) -> list[int]:
        return torch.unique(labels)[:rows].tolist()

    def row_names(self, names: list[str]) -> list[str]:
        return names

    def check_data(self, description: dict[str, Any]) -> None:
        return None

    def summary(self, record: dict[str, Any]) -> list[str]:
        scores = [f"{score[self.headline]:.3f} ({WEIGHTS_NAMES.get(w, w)})" for w, score in record["by_weights"].items()]
        return [f"{self.title} of {record['samples']} samples: {', '.join(scores)}"]


class DigitScorer(ScorerBase):
    """Class accuracy of the samples under an independent classifier of real handwritten digits."""

    description = "digits-svc (avgkit.eval.digits.DigitClassifier)"
    title = "digit-classifier accuracy"
    headline = "class_accuracy"

    def __init__(self) -> None:
        try:
            from avgkit.eval.digits import DigitClassifier
        except ImportError as err:
            raise AvgkitError(
                f"eval.classifier=digits needs the evaluation extras ({err}); pip install 'avgkit[eval,digits]' "
                f"or set eval.classifier=none"
            ) from None
        self._make = DigitClassifier
        self._clf: Any = None

    def labels(self, num_classes: int, per_class: int, grid_classes: int) -> Tensor:
        return torch.arange(num_classes).repeat_interleave(per_class)

    def classifier(self) -> Any:
        if self._clf is None:
            self._clf = self._make()
        return self._clf

    def score(self, images: Tensor, labels: Tensor) -> dict[str, Any]:
        correct = torch.as_tensor(self.classifier().predict(images)) == labels
        return {
            "class_accuracy": float(correct.float().mean()),
            "per_class_accuracy": {str(c): float(correct[labels == c].float().mean())
                                   for c in sorted(set(labels.tolist()))},
        }


def _mean(ok: Tensor) -> float | None:
    return float(ok.float().mean()) if len(ok) else None


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


class TextDigitsScorer(ScorerBase):
    """Two-digit numbers drawn from their words (``data.source: text-digits``), read half by half.

    Samples every number 20..99 by prompt, the held-out ones included; the digit
    classifier reads the left square half of each ``S x 2S`` image as the tens and the
    right one as the units, and a sample counts when both are right. Accuracy is reported separately for the numbers
    trained on (seen) and the held-out ones, at CFG 1 and at the recipe's CFG.
    """

    description = "text-digits: digits-svc on each half (avgkit.eval.digits.DigitClassifier)"
    title = "both digits right"
    headline = "held_out_accuracy"
    conditions = "text"

    def __init__(self) -> None:
        from avgkit.data.numbers import HELD_OUT, NUMBERS

        self._digits = DigitScorer()  # the same classifier (and the same missing-extras error)
        self.numbers = torch.as_tensor(NUMBERS)
        self.held_out = torch.isin(self.numbers, torch.as_tensor(HELD_OUT))

    def prompts(self) -> list[str]:
        from avgkit.data.numbers import number_words

        return [number_words(int(n)) for n in self.numbers]

    def labels(self, num_classes: int, per_class: int, grid_classes: int) -> Tensor:
        return torch.arange(len(self.numbers)).repeat_interleave(per_class)

    def cfg_scales(self, recipe_scale: float | None) -> list[float | None]:
        # CFG 1 tells what the conditioning alone gives; guidance can hide a weak one
        return [recipe_scale] if recipe_scale in (None, 1.0) else [1.0, recipe_scale]

    def grid_rows(self, labels: Tensor, rows: int) -> list[int]:
        """Every held-out number, then seen ones spread evenly over the rest of the rows."""
        held = torch.nonzero(self.held_out).flatten().tolist()
        seen = torch.nonzero(~self.held_out).flatten()
        extra = max(rows - len(held), 0)
        picks = seen[torch.linspace(0, len(seen) - 1, extra).round().long()].tolist() if extra else []
        return held + picks

    def row_names(self, names: list[str]) -> list[str]:
        return [n + (" (held out)" if h else "") for n, h in zip(names, self.held_out.tolist(), strict=True)]

    def check_data(self, description: dict[str, Any]) -> None:
        from avgkit.data.numbers import TEXT_DIGITS

        if description.get("kind") != TEXT_DIGITS:
            raise AvgkitError(f"eval.classifier=text-digits reads the numbers of data.source: {TEXT_DIGITS}, not "
                              f"{description.get('kind')!r} data; set eval.classifier=none")

    def score(self, images: Tensor, labels: Tensor) -> dict[str, Any]:
        from avgkit.data.numbers import halves_correct, number_words

        numbers = self.numbers[labels]
        ok = halves_correct(self._digits.classifier(), images, numbers)
        held = self.held_out[labels]
        return {
            "seen_accuracy": _mean(ok[~held]),
            "held_out_accuracy": _mean(ok[held]),
            "per_number": {number_words(int(n)): float(ok[numbers == n].float().mean())
                           for n in sorted(set(numbers.tolist()))},
        }

    def summary(self, record: dict[str, Any]) -> list[str]:
        lines = [f"{self.title} (digit classifier on each half), {record['samples_per_class']} samples per number:"]
        for w, by_weights in record["by_weights"].items():
            scales = by_weights.get("by_cfg") or {f"{record['sampler'].get('cfg_scale', 1.0):g}": by_weights}
            for cfg, score in scales.items():
                lines.append(f"  {WEIGHTS_NAMES.get(w, w)}, CFG {cfg}: seen {_fmt(score['seen_accuracy'])}, "
                             f"held-out {_fmt(score['held_out_accuracy'])}")
        return lines


SCORERS = {"digits": DigitScorer, "text-digits": TextDigitsScorer}


def get_scorer(name: str) -> SampleScorer | None:
    """The scorer ``eval.classifier`` names (``none``: no score); a missing dependency fails here, early."""
    if name == "none":
        return None
    if name not in SCORERS:
        raise AvgkitError(f"unknown eval.classifier {name!r}; use none or {', '.join(sorted(SCORERS))}")
    return SCORERS[name]()
