"""avgkit's own components, registered through the same hooks as any plugin.

Factories and configs are ``"module:attr"`` references: nothing here imports torch,
so ``avgkit --help``, ``avgkit ls`` and ``avgkit plugins`` start quickly.
"""

from __future__ import annotations

from pathlib import Path

from avgkit.hookspecs import API_VERSION, hookimpl

AVGKIT_API_VERSION = API_VERSION
_TOYS = "avgkit.testing.toys"


@hookimpl
def avgkit_register_samplers(register):
    register(
        "ar",
        "avgkit.sample.ar:ARSampler",
        config="avgkit.sample.ar:ARSamplerConfig",
        presets={"llamagen": {"cfg_scale": 2.0}, "aim-readme": {"cfg_scale": 5.0, "top_k": 600, "top_p": 0.98}},
        description="raster-order sampler with CFG, temperature, top-k, top-p and per-image seeds",
    )


@hookimpl
def avgkit_register_tokenizers(register):
    register("toy-patch", f"{_TOYS}:ToyPatchTokenizer", config=f"{_TOYS}:ToyPatchConfig", presets={"tiny": {}},
             description="parameter-free patch-intensity quantiser for tests")


@hookimpl
def avgkit_register_backbones(register):
    register("toy-gru", f"{_TOYS}:ToyGRUBackbone", config=f"{_TOYS}:ToyGRUConfig", presets={"tiny": {"dim": 32, "layers": 2}},
             description="tiny GRU backbone honouring adaLN modulation, for tests")


@hookimpl
def avgkit_register_conditioners(register):
    register("toy-class", f"{_TOYS}:ToyClassConditioner", config=f"{_TOYS}:ToyClassConfig",
             presets={"tiny": {}, "token-only": {"modulate": False}},
             description="class-embedding prefix with optional adaLN-single, for tests")


@hookimpl
def avgkit_register_metric_loggers(register):
    register("jsonl", "avgkit.loggers:JsonlLogger", config="avgkit.loggers:JsonlLoggerConfig",
             description="each record and sample-grid path as a JSON line in another file (metrics.jsonl is always "
                         "written)")


@hookimpl
def avgkit_recipe_dirs():
    # avgkit/recipes: in a checkout a link to the repository's recipes/, in a wheel the files
    return [Path(__file__).parent / "recipes"]
