"""Class specs, the npz writer and the uint8 conversion of saved samples."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from avgkit.errors import AvgkitError
from avgkit.images import grid_selection, save_labelled_grid, to_uint8_hwc
from avgkit.sample.classes import label_list, parse_classes
from avgkit.sample.npz import Member, read_npz, write_npz


def test_parse_classes_forms():
    assert parse_classes("1,5,9", 10) == [1, 5, 9]
    assert parse_classes("0-3, 7", 10) == [0, 1, 2, 3, 7]
    assert parse_classes("all", 4) == [0, 1, 2, 3]
    assert parse_classes(6, 10) == [6] and parse_classes([2, 2], 10) == [2, 2]
    drawn = parse_classes("random:3", 1000, seed=4)
    assert len(set(drawn)) == 3 and drawn == sorted(drawn) and drawn == parse_classes("random:3", 1000, seed=4)
    assert drawn != parse_classes("random:3", 1000, seed=5)
    assert label_list([4, 1], 2).tolist() == [4, 4, 1, 1]


@pytest.mark.parametrize("spec, words", [("12", "out of range"), ("a,b", "not a class id"), ("random:0", "random:"),
                                         ("random:x", "random:"), ("", "not a class id"),
                                         ("5-2", "runs backwards; write 2-5")])
def test_parse_classes_errors_are_one_line(spec, words):
    with pytest.raises(AvgkitError, match=words) as err:
        parse_classes(spec, 10)
    assert "\n" not in str(err.value)


def test_uint8_conversion_matches_png_rule_and_repeats_gray():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.999, 1.0, 3.0]).view(1, 1, 1, 6)
    out = to_uint8_hwc(x)
    assert out.shape == (1, 1, 6, 3) and out.dtype == np.uint8
    expect = np.clip(np.round((x.numpy().reshape(-1) + 1) * 127.5), 0, 255).astype(np.uint8)
    assert (out[0, 0, :, 0] == expect).all() and (out[..., 0] == out[..., 2]).all()


def test_npz_is_deterministic_streamed_and_loadable(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (7, 4, 4, 3), dtype=np.uint8)
    labels = np.arange(7, dtype=np.int64)
    a = write_npz(tmp_path / "a.npz", {"arr_0": imgs, "arr_1": labels})
    b = write_npz(tmp_path / "b.npz", [Member("arr_0", imgs.shape, imgs.dtype, [imgs[:3], imgs[3:]]),
                                       Member("arr_1", labels.shape, labels.dtype, [labels])])
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    back = read_npz(a)
    assert np.array_equal(back["arr_0"], imgs) and np.array_equal(back["arr_1"], labels)
    with pytest.raises(ValueError, match="expected"):
        write_npz(tmp_path / "c.npz", [Member("arr_0", (8, 4, 4, 3), imgs.dtype, [imgs])])
    assert not (tmp_path / "c.npz").exists() and not list(tmp_path.glob(".c.npz*"))


def test_grid_rows_are_classes(tmp_path):
    from PIL import Image

    labels = np.array([3, 3, 3, 1, 1, 8])
    chosen = grid_selection(labels, max_classes=2, per_class=2)
    assert chosen.tolist() == [0, 1, 3, 4]
    imgs = np.full((4, 8, 8, 3), 200, dtype=np.uint8)
    path = save_labelled_grid(imgs, labels[chosen], tmp_path / "grid.png", title="t")
    w, h = Image.open(path).size
    assert h > 2 * 48 and w > 2 * 48  # two rows, two columns of cells upscaled to >= 48 px


def test_job_folder_identity_and_resume_note(tmp_path):
    from avgkit.sample.job import JOB_FILE, _identity_problem, _read_job

    ident = {"seed": 1, "labels_sha256": "ab", "sampler": {"name": "ar", "top_k": 0}}
    cuda4 = {"batch_size": 4, "device_type": "cuda", "decode_width": 4}

    def claim(identity, started):
        old, error = _read_job(tmp_path)
        assert error is None
        return _identity_problem(tmp_path, old, identity, started)

    assert claim(ident, cuda4) == (None, None) and (tmp_path / JOB_FILE).is_file()
    assert claim(ident, cuda4) == (None, None)
    # another batch size alone keeps the shapes (the width is pinned): no note
    assert claim(ident, {**cuda4, "batch_size": 8}) == (None, None)
    error, note = claim(ident, {**cuda4, "decode_width": 8})
    assert error is None and "decode_width 4 -> 8" in note
    assert claim(ident, {**cuda4, "decode_width": 8, "device_type": "cpu"})[1] is None
    error, _ = claim({**ident, "seed": 2}, cuda4)
    assert "holds a different sampling job (seed: 1 there, 2 now)" in error
    # a job recorded before the backbone's decoding settings were: it cannot tell what it decoded with
    error, _ = claim({**ident, "decoding": {"state_dtype": "int8"}}, cuda4)
    assert "recorded before its decoding settings were" in error and "avgkit version that started it" in error
    # a record that still carries the width inside its sampler options is the same job
    record = json.loads((tmp_path / JOB_FILE).read_text())
    record["sampler"]["decode_width"] = 4
    (tmp_path / JOB_FILE).write_text(json.dumps(record))
    assert claim(ident, cuda4) == (None, None)
    (tmp_path / JOB_FILE).write_text("{not json")
    assert "is unreadable" in _read_job(tmp_path)[1]


def test_progress_lines_and_bar():
    import io

    from avgkit.sample.progress import SampleProgress

    lines = io.StringIO()
    p = SampleProgress(10, stream=lines, bar=False)
    p.advance(4, note=" [shard 1/3]")
    assert "sampling: 4/10 images" in lines.getvalue() and "[shard 1/3]" in lines.getvalue()
    bar = io.StringIO()
    p = SampleProgress(10, stream=bar, bar=True)
    p.advance(10)
    p.close()
    assert "10/10" in bar.getvalue() and "img/s" in bar.getvalue()


def test_grid_font_keeps_spaces():
    from avgkit.images import label_font

    font = label_font()
    assert font.getlength("digits step 600") > font.getlength("digitsstep600")


def test_job_decodes_in_groups_of_the_decode_width():
    from avgkit.sample.groups import in_fixed_groups

    class Gen:
        seen: list[int] = []

        def decode(self, codes, precision):
            self.seen.append(len(codes))
            return codes.float() * 2

    gen, codes = Gen(), torch.arange(14).reshape(7, 2)
    decode = lambda c: gen.decode(c, "fp32")  # noqa: E731
    assert torch.equal(in_fixed_groups(decode, 3, codes), codes.float() * 2) and gen.seen == [3, 3, 3]
    gen.seen.clear()
    assert torch.equal(in_fixed_groups(decode, None, codes), codes.float() * 2) and gen.seen == [7]
