"""Mamba-2 backbone for avgkit: the Mamba-2 mixer, its kernels and the AiM backbone."""
