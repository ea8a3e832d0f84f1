"""The generic training engine: optimizer, loop, checkpoints, DDP, and the recipe pipeline.

Entry points: :func:`avgkit.train.pipeline.run_recipe` (what ``avgkit train`` runs) and
:class:`avgkit.train.loop.Trainer` (the loop on its own). ``python -m avgkit.train``
runs a recipe, which is how ``torchrun`` launches multi-GPU training::

    torchrun --nproc_per_node 8 -m avgkit.train aim-b train.steps=1000
"""
