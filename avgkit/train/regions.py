"""A backbone's repeated blocks, and compiling them one by one (``train.compile: blocks``, auto's GPU choice).

The blocks are what ``backbone.fsdp_blocks()`` returns when the backbone has that method,
else its ``layers`` or ``blocks`` ``nn.ModuleList`` (the Mamba-2 and transformer
backbones). FSDP shards them one by one (:mod:`avgkit.train.parallel`), and regional
compilation compiles each block's call instead of the whole model: the blocks share one
code object, so Dynamo traces it once or twice (the first block sees no residual) rather
than the model's whole unrolled forward, and custom ops such as the Triton scan stay
opaque nodes inside the block graph.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from avgkit.errors import AvgkitError

BLOCK_LISTS = ("layers", "blocks")


def find_blocks(backbone: nn.Module) -> list[nn.Module] | None:
    """The backbone's repeated blocks, or None when it names none."""
    hook = getattr(backbone, "fsdp_blocks", None)
    if callable(hook):
        return list(hook())
    for name in BLOCK_LISTS:
        found = getattr(backbone, name, None)
        if isinstance(found, nn.ModuleList) and len(found):
            return list(found)
    return None


def backbone_blocks(backbone: nn.Module, purpose: str, action: str, instead: str) -> list[nn.Module]:
    """:func:`find_blocks`, or a one-line error naming ``purpose``, the ``action`` and the setting to use ``instead``."""
    blocks = find_blocks(backbone)
    if blocks is None:
        raise AvgkitError(
            f"{purpose}: backbone {type(backbone).__name__} has no block list to {action} (an nn.ModuleList named "
            f"{' or '.join(BLOCK_LISTS)}, or an fsdp_blocks() method); use {instead}"
        )
    return blocks


class _TrainingCall:
    """A block's call: compiled while gradients are recorded (the training forward), eager otherwise.

    Validation and sampling run without gradients and so stay eager: a sample drawn during
    training is the same as one drawn later from the checkpoint by an uncompiled model, and
    a decoding state never enters the compiled graph. A deep copy of the block (an EMA, a
    sampling template) is not compiled.
    """

    def __init__(self, block: nn.Module, options: dict[str, Any]) -> None:
        self.eager = block._call_impl
        self.compiled = torch.compile(block._call_impl, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return (self.compiled if torch.is_grad_enabled() else self.eager)(*args, **kwargs)

    def __deepcopy__(self, memo: dict) -> None:
        return None


def _blocks_to_compile(backbone: nn.Module) -> list[nn.Module]:
    return backbone_blocks(backbone, "train.compile=blocks", "compile", "train.compile=model")


def compile_blocks(backbone: nn.Module, **options: Any) -> None:
    """Compile each of the backbone's blocks in place for the training forward (``options`` go to
    ``torch.compile``); a one-line error when it names no blocks."""
    for block in _blocks_to_compile(backbone):
        # nn.Module calls _compiled_call_impl when set: what Module.compile() sets, with the grad switch added
        block._compiled_call_impl = _TrainingCall(block, options)


def resolve_compile(choice: str, device: torch.device, sharded: bool, backbone: nn.Module) -> str:
    """What ``train.compile`` means for this run: off, model or blocks.

    ``auto`` is blocks on a GPU (AiM-B and AiM-L trained twice as fast as eager on an H200,
    docs/benchmarks.md) and off on the CPU, where inductor's C++ build costs more than it
    saves on the runs people make there; off too for a backbone that names no blocks and
    under FSDP, where compiled blocks have not been checked.
    """
    if choice == "auto":
        usable = device.type == "cuda" and not sharded and find_blocks(backbone) is not None
        return "blocks" if usable else "off"
    if choice == "blocks":
        if sharded:
            raise AvgkitError("train.compile=blocks is not supported with train.parallel=fsdp (the sharding hooks "
                              "would enter the compiled blocks); use train.compile=off or model")
        _blocks_to_compile(backbone)
    return choice


def is_compiled(block: nn.Module) -> bool:
    return isinstance(getattr(block, "_compiled_call_impl", None), _TrainingCall)
