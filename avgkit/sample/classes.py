"""Which classes to sample: ``1,5,9``, ranges ``0-9``, ``all`` or ``random:N``; and the label list."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from avgkit.errors import AvgkitError


def parse_classes(spec: str | int | Iterable[int], num_classes: int, *, seed: int = 0) -> list[int]:
    """Class ids from a spec, each checked against ``[0, num_classes)``.

    * ``"all"``: every class in order;
    * ``"random:N"``: N distinct classes drawn with ``seed`` (sorted);
    * ``"1,5,9"`` and ranges ``"0-9"`` (inclusive), mixed freely;
    * an int or a sequence of ints.
    """
    if isinstance(spec, int):
        classes = [spec]
    elif not isinstance(spec, str):
        classes = [int(c) for c in spec]
    else:
        text = spec.strip().lower()
        if text == "all":
            return list(range(num_classes))
        if text.startswith("random:"):
            count = text.split(":", 1)[1]
            if not count.isdigit() or not 0 < int(count) <= num_classes:
                raise AvgkitError(f"--classes {spec!r}: N must be a whole number in 1..{num_classes} (e.g. random:10)")
            rng = np.random.default_rng(seed)
            return sorted(int(c) for c in rng.choice(num_classes, size=int(count), replace=False))
        classes = []
        for part in (p.strip() for p in text.split(",")):
            lo, dash, hi = part.partition("-")
            try:
                first, last = (int(lo), int(hi)) if dash and lo else (int(part), int(part))
            except ValueError:
                raise AvgkitError(
                    f"--classes {spec!r}: {part!r} is not a class id; use e.g. 1,5,9 or 0-9 or all or random:10"
                ) from None
            if last < first:
                raise AvgkitError(f"--classes {spec!r}: the range {part!r} runs backwards; write {last}-{first}")
            classes.extend(range(first, last + 1))
    if not classes:
        raise AvgkitError("no classes given; use e.g. --classes 1,5,9 or all")
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise AvgkitError(f"class {bad[0]} is out of range: this model has classes 0..{num_classes - 1}")
    return classes


def label_list(classes: Sequence[int], per_class: int) -> np.ndarray:
    """Labels of a job: each class repeated ``per_class`` times, class by class."""
    if per_class < 1:
        raise AvgkitError(f"--per-class must be at least 1 (got {per_class})")
    return np.repeat(np.asarray(classes, dtype=np.int64), per_class)
