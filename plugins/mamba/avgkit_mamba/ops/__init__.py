"""Mamba-2 operators: pure-PyTorch references and their Triton kernels.

The torch modules (``ssd_torch``, ``conv_torch``) are the CPU path and the test
oracle. The Triton modules are imported only when a Triton implementation is
chosen (see :mod:`avgkit_mamba.ops.dispatch`), never at package import.
"""

from avgkit_mamba.ops.conv_torch import causal_conv1d, conv_step
from avgkit_mamba.ops.dispatch import chunk_scan, fused_step, resolve_impl
from avgkit_mamba.ops.ssd_torch import ssd_chunk_scan, ssd_scan_naive, ssd_step

__all__ = [
    "causal_conv1d",
    "chunk_scan",
    "conv_step",
    "fused_step",
    "resolve_impl",
    "ssd_chunk_scan",
    "ssd_scan_naive",
    "ssd_step",
]
