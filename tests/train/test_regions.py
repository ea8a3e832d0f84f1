"""``train.compile``: what auto picks where, and the settings refused before a run starts."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from train_helpers import toy_model, write_recipe

from avgkit.errors import AvgkitError
from avgkit.plugins import get_registry
from avgkit.train.regions import find_blocks, resolve_compile


class Stacked(nn.Module):
    """A backbone's shape as far as compiling goes: a list of blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))


@pytest.fixture
def backbones(builtin_plugins):
    return Stacked(), toy_model(get_registry()).backbone


def test_auto_compiles_blocks_on_a_gpu_only(backbones):
    stacked, gru = backbones
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert len(find_blocks(stacked)) == 3 and find_blocks(gru) is None
    assert resolve_compile("auto", cuda, False, stacked) == "blocks"
    assert resolve_compile("auto", cpu, False, stacked) == "off"
    assert resolve_compile("auto", cuda, True, stacked) == "off"  # fsdp: not checked with compiled blocks
    assert resolve_compile("auto", cuda, False, gru) == "off"  # nothing to compile one by one
    assert resolve_compile("model", cuda, True, gru) == "model"


def test_blocks_is_refused_where_it_cannot_work(backbones):
    stacked, gru = backbones
    with pytest.raises(AvgkitError, match="train.compile=blocks: backbone ToyGRUBackbone has no block list to compile") as err:
        resolve_compile("blocks", torch.device("cpu"), False, gru)
    assert "\n" not in str(err.value) and "use train.compile=model" in str(err.value)
    with pytest.raises(AvgkitError, match="not supported with train.parallel=fsdp"):
        resolve_compile("blocks", torch.device("cuda", 0), True, stacked)


def test_a_recipe_asking_blocks_of_a_backbone_without_them_is_refused_before_writing(tmp_path, builtin_plugins,
                                                                                      monkeypatch):
    import avgkit.train.pipeline as pipeline
    from avgkit.recipe import load_recipe
    from avgkit.train.pipeline import run_recipe

    def tokenizer_stage(*args, **kwargs):
        raise AssertionError("the run got past its checks to the tokenizer")

    monkeypatch.setattr(pipeline, "ensure_tokenizer_weights", tokenizer_stage)
    recipe = write_recipe(tmp_path / "r.yaml", data={"source": "digits", "store": None},
                          train={"steps": 2, "batch_size": 8, "device": "cpu", "compile": "blocks"},
                          output_dir=str(tmp_path / "run"))
    with pytest.raises(AvgkitError, match="train.compile=blocks: backbone ToyGRUBackbone has no block list"):
        run_recipe(load_recipe(str(recipe)), progress=False)
    assert not (tmp_path / "run").exists()
