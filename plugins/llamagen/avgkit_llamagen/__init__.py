"""LlamaGen VQ image tokenizer for avgkit (VQ-16 / VQ-8, weight-compatible with the official checkpoints)."""
