"""Metric loggers for avgkit: TensorBoard and Weights & Biases."""
