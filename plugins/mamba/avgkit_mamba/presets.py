"""Named sizes. AiM's use a 16384-code, 256-token VQ-16 tokenizer (filled in by the recipe)."""

PRESETS: dict[str, dict] = {
    # paper Table 1; parameter counts with the recipe's conditioner are asserted in the tests
    "aim-b": {"d_model": 768, "n_layer": 24},
    "aim-l": {"d_model": 1024, "n_layer": 48},
    "aim-xl": {"d_model": 1536, "n_layer": 48},
    "aim-1b": {"d_model": 2048, "n_layer": 48},
    # CPU sizes
    "digits": {"d_model": 192, "n_layer": 4, "d_state": 32, "headdim": 32, "chunk_size": 32},
    "tiny": {"d_model": 64, "n_layer": 2, "d_state": 16, "headdim": 16, "chunk_size": 8},
}
