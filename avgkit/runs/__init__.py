"""The one owner of run directories and checkpoints: their layout, writing, reading and locking.

Training, sampling, the Python API, conversion, sweeps and plugin trainers all go
through this package; none of them spells a file name of a run on its own
(:mod:`avgkit.runs.layout`).
"""
