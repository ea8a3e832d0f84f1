"""`avgkit sample`: files, format, determinism across batch sizes, resumable shards."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

import avgkit.api as api
from avgkit.io import sha256_file


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sample_writes_adm_npz_pngs_grid_and_record(toy_run, tmp_path, cli):
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    code, _, err = cli("sample", str(toy_run), "--classes", "1,3", "--per-class", "3", "--batch-size", "2",
                       "--seed", "5", "--cfg", "3", "--top-k", "6", "--device", "cpu", "--out", str(out_a))
    assert code == 0, err
    assert "warm-up" in err and "images/s" in err
    data = np.load(out_a / "samples.npz", allow_pickle=False)
    images, labels = data["arr_0"], data["arr_1"]
    assert images.shape == (6, 8, 8, 3) and images.dtype == np.uint8
    assert labels.tolist() == [1, 1, 1, 3, 3, 3]
    assert (images[..., 0] == images[..., 1]).all() and (images[..., 0] == images[..., 2]).all()  # gray x 3
    assert len(list((out_a / "images").glob("*.png"))) == 6 and (out_a / "grid.png").is_file()
    record = json.loads((out_a / "sampling.json").read_text())
    assert record["sampler"]["cfg_scale"] == 3.0 and record["sampler"]["top_k"] == 6
    assert record["sampler"]["top_p"] == 0.95  # unset options keep the recipe's value
    assert record["seed"] == 5 and record["num_images"] == 6 and record["avgkit_version"]
    weights = toy_run / "checkpoints" / "step-000005" / "ema.safetensors"
    assert record["checkpoint"]["weights_sha256"] == sha256_file(weights) and record["checkpoint"]["ema"] is True
    assert record["timing"]["images_per_s"] > 0

    # another batch size (and shard size): the same images
    code, _, err = cli("sample", str(toy_run), "--classes", "1,3", "--per-class", "3", "--batch-size", "5",
                       "--seed", "5", "--cfg", "3", "--top-k", "6", "--device", "cpu", "--out", str(out_b), "--quiet")
    assert code == 0, err
    assert np.array_equal(np.load(out_b / "samples.npz")["arr_0"], images)
    # and the Python API agrees with the command line
    gen = api.load(toy_run, device="cpu")
    assert np.array_equal(gen.generate([1, 3], n_per_class=3, seed=5, cfg_scale=3, top_k=6, output="uint8"), images)


def test_shards_resume_to_identical_npz(toy_run, tmp_path, cli):
    out = tmp_path / "job"
    args = ("sample", str(toy_run), "--classes", "0-4", "--per-class", "2", "--batch-size", "2", "--shard-size", "3",
            "--device", "cpu", "--no-png", "--out", str(out))
    assert cli(*args)[0] == 0
    shards = sorted((out / "shards").glob("shard-*.npz"))
    assert [s.name for s in shards] == [f"shard-{i:05d}.npz" for i in range(4)]  # 10 images in shards of 3
    first = _sha(out / "samples.npz")
    shard_bytes = shards[1].read_bytes()
    shards[1].unlink()
    (out / "samples.npz").unlink()
    code, _, err = cli(*args)
    assert code == 0, err
    assert "3 of 4 shards already done, 1 to sample" in err
    assert json.loads((out / "sampling.json").read_text())["timing"]["sampled_this_run"] == 3
    assert shards[1].read_bytes() == shard_bytes and _sha(out / "samples.npz") == first
    # a finished job reruns without sampling and merges to the same bytes
    assert cli(*args)[0] == 0 and _sha(out / "samples.npz") == first


def test_resume_with_another_batch_size_keeps_shards_and_decode_width(toy_run, tmp_path, cli):
    out = tmp_path / "job"
    base = ("sample", str(toy_run), "--classes", "0-4", "--per-class", "2", "--device", "cpu", "--no-png", "--quiet",
            "--out", str(out))
    assert cli(*base, "--batch-size", "3")[0] == 0
    job = json.loads((out / "job.json").read_text())
    assert job["shard_size"] == 3 and job["started_with"]["decode_width"] == 3 and "decode_width" not in job["sampler"]
    assert json.loads((out / "sampling.json").read_text())["sampler"]["decode_width"] == 3
    first = _sha(out / "samples.npz")
    (out / "shards" / "shard-00002.npz").unlink()
    (out / "samples.npz").unlink()
    # e.g. out of memory: resume with a smaller batch; the job keeps its shards of 3 and width 3
    code, _, err = cli(*base[:-3], "--out", str(out), "--batch-size", "2")  # not --quiet: read the notes
    assert code == 0, err
    assert "decoding in groups of 3 images, the width this job started with" in err
    assert json.loads((out / "sampling.json").read_text())["sampler"]["decode_width"] == 3
    assert _sha(out / "samples.npz") == first
    # an explicit shard size that differs is another job
    code, _, err = cli(*base, "--batch-size", "2", "--shard-size", "2")
    assert code == 2 and "shard_size: 3 there, 2 now" in err


def test_small_jobs_are_not_padded_a_foreign_folder_is_refused_and_speed_is_kept(toy_run, tmp_path, cli):
    out = tmp_path / "job"
    base = ("sample", str(toy_run), "--classes", "1", "--per-class", "3", "--device", "cpu", "--no-png", "--quiet",
            "--out", str(out))
    assert cli(*base, "--batch-size", "500")[0] == 0
    assert json.loads((out / "job.json").read_text())["started_with"]["decode_width"] == 3  # not 500
    speed = json.loads((out / "sampling.json").read_text())["timing"]["images_per_s"]
    assert cli(*base, "--batch-size", "500")[0] == 0  # finished: nothing sampled, the speed measured is kept
    timing = json.loads((out / "sampling.json").read_text())["timing"]
    assert timing["sampled_this_run"] == 0 and timing["last_measured"]["images_per_s"] == speed
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.png").write_bytes(b"x")
    code, _, err = cli(*base[:-1], str(other))
    assert code == 2 and "is not empty and holds no sampling job" in err
    assert sorted(p.name for p in other.iterdir()) == ["cat.png"]


def test_a_different_job_is_refused_and_damaged_shards_named(toy_run, tmp_path, cli):
    out = tmp_path / "job"
    base = ("sample", str(toy_run), "--classes", "2", "--per-class", "4", "--batch-size", "2", "--device", "cpu",
            "--no-png", "--quiet", "--out", str(out))
    assert cli(*base)[0] == 0
    code, _, err = cli(*base, "--seed", "1")
    assert code == 2 and "holds a different sampling job (seed" in err and err.count("\n") == 1
    (out / "shards" / "shard-00001.npz").write_bytes(b"not a zip")
    code, _, err = cli(*base)
    assert code == 2 and "shard-00001.npz is unreadable" in err and "delete" in err


def test_a_job_the_backbone_would_decode_otherwise_is_refused(toy_run, tmp_path, cli, monkeypatch):
    """A backbone's own decoding settings (e.g. the dtype its state resolves to) are part of the job: a resume
    that would decode the remaining images otherwise (a recipe edited, another avgkit) is refused, not mixed."""
    from avgkit.interfaces import Backbone

    out = tmp_path / "job"
    base = ("sample", str(toy_run), "--classes", "2", "--per-class", "4", "--batch-size", "2", "--device", "cpu",
            "--no-png", "--quiet", "--out", str(out))
    monkeypatch.setattr(Backbone, "decode_settings", lambda self, autocast=None: {"state_dtype": "bfloat16"})
    assert cli(*base)[0] == 0
    assert json.loads((out / "job.json").read_text())["decoding"] == {"state_dtype": "bfloat16"}
    assert json.loads((out / "sampling.json").read_text())["decoding"] == {"state_dtype": "bfloat16"}
    assert cli(*base)[0] == 0  # the same settings: the job resumes
    monkeypatch.setattr(Backbone, "decode_settings", lambda self, autocast=None: {"state_dtype": "int8"})
    code, _, err = cli(*base)
    assert code == 2 and "holds a different sampling job (decoding" in err and err.count("\n") == 1


@pytest.mark.parametrize("args, words", [
    (("--classes", "10"), "out of range"),
    (("--device", "cuda:0"), "no GPU"),
    (("--precision", "fp8"), "precision"),
    (("--step", "9"), "no complete checkpoint at step 9"),
    (("--batch-size", "0"), "--batch-size must be at least 1"),
    (("--shard-size", "0"), "--shard-size must be at least 1"),
])
def test_sample_errors_are_one_line(toy_run, tmp_path, cli, args, words):
    import torch

    if "cuda:0" in args and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code, _, err = cli("sample", str(toy_run), "--device", "cpu", "--quiet", "--out", str(tmp_path / "o"), *args) \
        if "--device" not in args else cli("sample", str(toy_run), "--quiet", "--out", str(tmp_path / "o"), *args)
    assert code == 2 and words in err and err.startswith("error: ") and err.count("\n") == 1


def test_out_pointing_at_a_file_is_one_line(toy_run, tmp_path, cli):
    (tmp_path / "taken").write_text("x")
    code, _, err = cli("sample", str(toy_run), "--out", str(tmp_path / "taken"))
    assert code == 2 and "is a file; pass a folder" in err and len(err.strip().splitlines()) == 1
