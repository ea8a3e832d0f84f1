"""avgkit's own components, registered through the same hooks as any plugin."""

from __future__ import annotations

from pathlib import Path

from avgkit.hookspecs import hookimpl
from avgkit.interfaces import API_VERSION

AVGKIT_API_VERSION = API_VERSION


@hookimpl
def avgkit_register_samplers(register):
    from avgkit.sample.ar import ARSampler, ARSamplerConfig

    register(
        "ar",
        ARSampler,
        config=ARSamplerConfig,
        presets={"llamagen": {"cfg_scale": 2.0}, "aim-readme": {"cfg_scale": 5.0, "top_k": 600, "top_p": 0.98}},
        description="raster-order sampler with CFG, temperature, top-k, top-p and per-image seeds",
    )


@hookimpl
def avgkit_register_tokenizers(register):
    from avgkit.testing.toys import ToyPatchConfig, ToyPatchTokenizer

    register("toy-patch", ToyPatchTokenizer, config=ToyPatchConfig, presets={"tiny": {}},
             description="parameter-free patch-intensity quantiser for tests")


@hookimpl
def avgkit_register_backbones(register):
    from avgkit.testing.toys import ToyGRUBackbone, ToyGRUConfig

    register("toy-gru", ToyGRUBackbone, config=ToyGRUConfig, presets={"tiny": {"dim": 32, "layers": 2}},
             description="tiny GRU backbone honouring adaLN modulation, for tests")


@hookimpl
def avgkit_register_conditioners(register):
    from avgkit.testing.toys import ToyClassConditioner, ToyClassConfig

    register("toy-class", ToyClassConditioner, config=ToyClassConfig,
             presets={"tiny": {}, "token-only": {"modulate": False}},
             description="class-embedding prefix with optional adaLN-single, for tests")


@hookimpl
def avgkit_recipe_dirs():
    # avgkit/recipes: in a checkout a link to the repository's recipes/, in a wheel the files
    return [Path(__file__).parent / "recipes"]
