"""Scores of a run's final samples, chosen by the recipe's ``eval.classifier``.

A scorer says which labels to sample (``labels``) and what the samples are worth
(``score``); the training pipeline only asks for one by name, so a new evaluator is a new
entry here, not a branch in the pipeline.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from avgkit.errors import AvgkitError


class SampleScorer(Protocol):
    #: recorded in eval.json as ``classifier``
    description: str
    #: the summary's words for the headline score
    title: str
    #: the headline score's key in :meth:`score`
    headline: str

    def labels(self, num_classes: int, per_class: int, grid_classes: int) -> Tensor:
        """The labels to sample (all classes: a score needs every one)."""
        ...

    def score(self, images: Tensor, labels: Tensor) -> dict[str, Any]:
        ...


class DigitScorer:
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

    def score(self, images: Tensor, labels: Tensor) -> dict[str, Any]:
        if self._clf is None:
            self._clf = self._make()
        correct = torch.as_tensor(self._clf.predict(images)) == labels
        return {
            "class_accuracy": float(correct.float().mean()),
            "per_class_accuracy": {str(c): float(correct[labels == c].float().mean())
                                   for c in sorted(set(labels.tolist()))},
        }


SCORERS = {"digits": DigitScorer}


def get_scorer(name: str) -> SampleScorer | None:
    """The scorer ``eval.classifier`` names (``none``: no score); a missing dependency fails here, early."""
    if name == "none":
        return None
    if name not in SCORERS:
        raise AvgkitError(f"unknown eval.classifier {name!r}; use none or {', '.join(sorted(SCORERS))}")
    return SCORERS[name]()
