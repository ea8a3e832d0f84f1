"""eval.classifier=text-digits: numbers drawn from their words, read half by half."""

from __future__ import annotations

import pytest
import torch

from avgkit.data.numbers import HELD_OUT, NUMBERS, TextDigitsSource, halves_correct, number_words
from avgkit.data.sources import load_digits_images
from avgkit.errors import AvgkitError
from avgkit.eval.scorers import TextDigitsScorer, get_scorer

PER_NUMBER = 2


@pytest.fixture(scope="module")
def scorer():
    return get_scorer("text-digits")


@pytest.fixture(scope="module")
def pool(scorer):
    """For each digit, real 32x32 training digits that the classifier reads correctly."""
    digits, labels = load_digits_images(32, "train")
    read = torch.as_tensor(scorer._digits.classifier().predict(digits))
    return [digits[(labels == d) & (read == d)][:PER_NUMBER] for d in range(10)]


def _numbers_image(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """TextDigitsSource's layout: two 32x32 digits side by side in 32x64."""
    return torch.cat([left, right], -1)


def _images(pool, swap: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for index, n in enumerate(NUMBERS):
        tens, units = divmod(n, 10)
        for k in range(PER_NUMBER):
            left, right = pool[tens][k], pool[units][k]
            images.append(_numbers_image(*((right, left) if swap else (left, right))))
            labels.append(index)
    return torch.stack(images), torch.as_tensor(labels)


def test_prompts_cover_every_number_and_the_layout_matches_the_source(scorer, pool):
    prompts = scorer.prompts()
    assert prompts == [number_words(n) for n in range(20, 100)] and "forty-one" in prompts
    labels = scorer.labels(len(prompts), PER_NUMBER, 12)
    assert labels.tolist() == [i for i in range(80) for _ in range(PER_NUMBER)]
    # the scorer reads the source's own layout: its held-out-digit images score like the classifier
    source = TextDigitsSource((32, 64), "test")
    assert source.images.shape[-2:] == (32, 64)
    prompt_ids = torch.as_tensor([prompts.index(source.class_names[c]) for c in source.labels.tolist()])
    score = scorer.score(source.images, prompt_ids)
    assert score["seen_accuracy"] > 0.9 and score["held_out_accuracy"] is None


def test_real_digits_in_place_score_one(scorer, pool):
    images, labels = _images(pool)
    score = scorer.score(images, labels)
    assert score["seen_accuracy"] == 1.0 and score["held_out_accuracy"] == 1.0
    assert set(score["per_number"]) == set(scorer.prompts()) and min(score["per_number"].values()) == 1.0


def test_swapped_halves_score_zero(scorer, pool):
    images, labels = _images(pool, swap=True)
    score = scorer.score(images, labels)
    assert score["held_out_accuracy"] == 0.0  # no held-out number reads the same both ways
    for n in NUMBERS:  # only 22, 33, ..., 99 survive a swap
        assert score["per_number"][number_words(n)] == (1.0 if n % 11 == 0 else 0.0), n
    seen = [n for n in NUMBERS if n not in HELD_OUT]
    assert score["seen_accuracy"] == pytest.approx(sum(n % 11 == 0 for n in seen) / len(seen))


def test_one_wrong_half_fails_the_number(scorer, pool):
    images, labels = _images(pool)
    images[..., 32:] = pool[0][0]  # every units digit drawn as 0
    score = scorer.score(images, labels)
    assert all(v == (1.0 if w.count("-") == 0 else 0.0) for w, v in score["per_number"].items())


def test_each_half_is_read_as_it_is(scorer, pool):
    """The halves go to the classifier unchanged: the same digits read alone give the same answers."""
    images, labels = _images(pool)
    clf = scorer._digits.classifier()
    numbers = torch.as_tensor(NUMBERS)[labels]
    tens, units = torch.as_tensor(clf.predict(images[..., :32])), torch.as_tensor(clf.predict(images[..., 32:]))
    assert torch.equal(tens, numbers // 10) and torch.equal(units, numbers % 10)
    assert halves_correct(clf, images, numbers).all()
    with pytest.raises(ValueError, match=r"S x 2S\), got 32x32"):
        halves_correct(clf, images[..., :32], numbers)


def test_grid_rows_scales_and_row_names(scorer):
    labels = scorer.labels(80, 3, 12)
    rows = scorer.grid_rows(labels, 12)
    assert [NUMBERS[r] for r in rows[:8]] == list(HELD_OUT) and len(rows) == 12
    assert not set(NUMBERS[r] for r in rows[8:]) & set(HELD_OUT)
    assert scorer.cfg_scales(3.0) == [1.0, 3.0] and scorer.cfg_scales(1.0) == [1.0]
    names = scorer.row_names(scorer.prompts())
    assert names[NUMBERS.index(41)] == "forty-one (held out)" and names[NUMBERS.index(42)] == "forty-two"


def test_other_data_is_refused(scorer):
    scorer.check_data({"kind": "text-digits"})
    with pytest.raises(AvgkitError, match="reads the numbers of data.source: text-digits"):
        scorer.check_data({"kind": "captioned-folder"})
    assert isinstance(scorer, TextDigitsScorer) and scorer.conditions == "text"
