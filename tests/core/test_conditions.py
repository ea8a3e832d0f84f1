"""Condition batches, padded conditioning, caption tables and the numbers demo's data."""

from __future__ import annotations

import json

import pytest
import torch

from avgkit.conditions import Conditions
from avgkit.data.captions import CaptionTable, read_captions
from avgkit.data.numbers import (
    HELD_OUT,
    PER_NUMBER,
    TRAIN_NUMBERS,
    check_held_out_words,
    make_pairs,
    number_words,
    side_by_side,
    split_sides,
    words_number,
)
from avgkit.errors import AvgkitError
from avgkit.interfaces import Conditioner, Conditioning


def test_conditioning_cat_pads_left_and_aligns():
    a = Conditioning(torch.ones(2, 3, 4))
    b = Conditioning(torch.full((1, 1, 4), 2.0))
    both = Conditioning.cat([a, b])
    assert both.prefix.shape == (3, 3, 4)
    assert both.prefix_mask.tolist() == [[True] * 3, [True] * 3, [False, False, True]]
    right = Conditioning(torch.arange(3.0).view(1, 3, 1), prefix_mask=torch.tensor([[True, False, False]]))
    aligned = right.left_aligned()
    assert aligned.prefix_mask.tolist() == [[False, False, True]] and aligned.prefix[0, -1, 0] == 0.0
    assert Conditioning.cat([a, a]).prefix_mask is None  # no padding, no mask: the class path is unchanged


def test_conditions_rows():
    c = Conditions.tokens(torch.tensor([[1, 2], [3, 0]]), torch.tensor([[True, True], [True, False]]))
    assert len(c) == 2 and c[1:].values.tolist() == [[3, 0]]
    d = Conditions.cat([c, Conditions.tokens(torch.tensor([[5, 6, 7]]))])
    assert d.values.shape == (3, 3) and d.mask[0].tolist() == [True, True, False]
    assert c.expand_last(2).values.tolist() == [[1, 2], [3, 0], [3, 0], [3, 0]]
    assert c.with_null(torch.tensor([False, True])).null.tolist() == [False, True]
    labels = Conditions.classes(torch.tensor([1, 2])).with_null(torch.tensor([True, False])).labels(10)
    assert labels.tolist() == [10, 2]
    with pytest.raises(ValueError, match="mask"):
        Conditions.tokens(torch.zeros(2, 3), torch.ones(2, 2, dtype=torch.bool))


def test_class_conditioner_refuses_text():
    with pytest.raises(TypeError, match="text conditioner"):
        Conditioner().tokenize(["seven"])


class _Tok:
    def tokenize(self, texts):
        return Conditions.tokens(torch.tensor([[len(t)] for t in texts]))


def test_caption_table_and_captions_file(tmp_path):
    table = CaptionTable(["a", "bb"], _Tok())
    batch = table(torch.tensor([1, -1, 0]))
    assert batch.values[:, 0].tolist() == [2, 1, 1] and batch.null.tolist() == [False, True, False]
    with pytest.raises(AvgkitError, match="past the 2 captions"):
        table(torch.tensor([2]))
    (tmp_path / "captions.jsonl").write_text(json.dumps({"path": "x.png", "caption": "a cat"}) + "\nnot json\n")
    with pytest.raises(AvgkitError, match="line 2"):
        read_captions(tmp_path)


def test_numbers_words_and_held_out():
    assert number_words(42) == "forty-two" and number_words(70) == "seventy" and words_number("Forty-Two") == 42
    check_held_out_words()
    assert not set(HELD_OUT) & set(TRAIN_NUMBERS) and len(TRAIN_NUMBERS) + len(HELD_OUT) == 80
    left, right, which = make_pairs(torch.arange(100) % 10, [42, 57], 3)
    assert ((left % 10) == which // 10).all() and ((right % 10) == which % 10).all()


def test_side_by_side_grid_roundtrip():
    left, right = torch.arange(16).view(1, 16), 100 + torch.arange(16).view(1, 16)
    joined = side_by_side(left, right, (4, 4))
    assert joined.shape == (1, 32) and joined[0, :8].tolist() == [0, 1, 2, 3, 100, 101, 102, 103]
    l2, r2 = split_sides(joined, (4, 4))
    assert torch.equal(l2, left) and torch.equal(r2, right)


def test_text_digits_source_is_two_digits_side_by_side_and_leaves_the_held_out_numbers_out():
    from avgkit.data.captions import is_captioned
    from avgkit.data.sources import held_out_source, is_same_source, load_digits_images, open_source

    train, test = open_source("text-digits", [32, 64]), held_out_source("text-digits", (32, 64))
    assert is_captioned(train.describe()) and train.channels == 1 and train.image_size == (32, 64)
    assert len(train) == PER_NUMBER["train"] * len(TRAIN_NUMBERS) and len(test) == 4 * len(TRAIN_NUMBERS)
    assert train.class_names == test.class_names == sorted(number_words(n) for n in TRAIN_NUMBERS)
    assert not {number_words(n) for n in HELD_OUT} & set(train.class_names)
    image, label = train[0]
    assert image.shape == (1, 32, 64) and train.class_names[label] == number_words(20)
    # each half is a whole training digit drawn as the digits source draws it at 32: the 2 left, the 0 right
    digits, labels = load_digits_images(32, "train")
    assert any(torch.equal(image[..., :32], d) for d in digits[labels == 2])
    assert any(torch.equal(image[..., 32:], d) for d in digits[labels == 0])
    held, held_labels = load_digits_images(32, "test")
    t_image, t_label = test[0]
    tens, units = divmod(words_number(test.class_names[t_label]), 10)
    assert any(torch.equal(t_image[..., :32], d) for d in held[held_labels == tens])
    assert any(torch.equal(t_image[..., 32:], d) for d in held[held_labels == units])
    assert train.at_size((16, 32))[0][0].shape == (1, 16, 32)
    with pytest.raises(AvgkitError, match=r"S x 2S pixels, not 32x32; set the tokenizer's image_size to \[32, 64\]"):
        open_source("text-digits", 32)
    assert is_same_source(train.describe(), "text-digits", (32, 64))
    assert not is_same_source(train.describe(), "digits", (32, 64))
    # a store encoded from an earlier layout of text-digits (the stretched square one) is another source
    assert not is_same_source({**train.describe(), "layout": "tall-halves"}, "text-digits", (32, 64))


def test_captioned_folder_reads_like_an_image_folder(tmp_path):
    from PIL import Image

    from avgkit.data.captions import CaptionedFolder, has_captions
    from avgkit.data.sources import is_same_source, open_source

    (tmp_path / "a").mkdir()
    Image.new("RGB", (12, 8), (255, 0, 0)).save(tmp_path / "a" / "x.png")
    (tmp_path / "a" / "y.png").write_bytes(b"not a png")
    lines = [{"path": "a/x.png", "caption": "red"}, {"path": "a/y.png", "caption": "broken"}]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    source = open_source(str(tmp_path), 4)
    assert isinstance(source, CaptionedFolder) and has_captions(tmp_path) and source.class_names == ["broken", "red"]
    items = list(source)
    assert len(items) == 1 and items[0][1].shape == (3, 4, 4) and items[0][2] == 1
    assert source.skipped[0].path.endswith("y.png")
    assert is_same_source(source.describe(), str(tmp_path), 4) and source.at_size(8)[0][0].shape == (3, 8, 8)
