"""The recipe reference, generated from the pydantic models of :mod:`avgkit.recipe`.

``avgkit recipes schema [section]`` prints it, and ``docs/recipe-schema.md`` is its
output (a test keeps the two equal): regenerate the page with
``avgkit recipes schema > docs/recipe-schema.md`` after changing a recipe model.
Nothing here imports torch or a plugin.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import PydanticUndefined

from avgkit.errors import AvgkitError, did_you_mean

HEADER = """\
# Recipe schema

Every key a recipe may hold, generated from avgkit's pydantic models (`avgkit recipes
schema [section]` prints the same). Unknown keys are errors. The options of a
component (the keys next to its `name` and `preset`) belong to that component:
`avgkit ls backbones --options` lists them for every installed one. How recipes
build on each other with `base:` is in [recipes](recipes.md#building-on-another-recipe-base).
"""


def type_name(annotation: Any) -> str:
    """``int``, ``int | None``, ``one of a, b`` (a Literal's choices), ``tuple[float, float]``, ..."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin is typing.Annotated:  # constraints inside a union (an image size's sides)
        return type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args)}]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section" if annotation.__name__.endswith("Section") else "component"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field: Any) -> str:
    """`` (>= 1)``-style constraints of a field, from its annotated-types metadata."""
    marks = []
    for meta in field.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(meta, attr, None)
            if value is not None:
                marks.append(f"{sign} {value}")
    return f" ({', '.join(marks)})" if marks else ""


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()
    else:
        value = field.default
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        flat = getattr(value, "flat", None)
        if flat is not None:  # a component reference, e.g. the sampler
            return f"`{flat()['name']}`"
        return "(all defaults)"
    if value is None:
        return "`null`"
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, str):
        return f"`{value!r}`" if value == "" else f"`{value}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def _rows(model: type[BaseModel], extra: list[tuple[str, str, str, str]] = ()) -> list[str]:
    out = ["| key | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        desc = (field.description or "").replace("|", "\\|")
        kind = (type_name(field.annotation) + _bounds(field)).replace("|", "\\|")
        out.append(f"| `{name}` | {kind} | {_default(field)} | {desc} |")
    for row in extra:
        out.append("| " + " | ".join(row) + " |")
    return out


def sections() -> dict[str, tuple[str, list[str]]]:
    """Section name -> (introduction, table lines)."""
    from avgkit.recipe import ComponentRef, DataSection, EvalSection, Recipe, TrainSection

    component = [
        "| key | type | default | description |",
        "|---|---|---|---|",
        "| `name` | str | required | the registry name (`avgkit ls <role>s`) |",
        "| `preset` | str \\| None | `null` | a named set of options of that component |",
        "| *any other key* | | | an option of that component, validated by its own config "
        "(`avgkit ls <role>s --options`) |",
        f"| `train` | dict \\| None | `null` | {ComponentRef.model_fields['train'].description} "
        "(`avgkit ls tokenizers --options` shows the tokenizer's, the trainer's keys are its own) |",
    ]
    return {
        "recipe": (
            "The top level of a recipe file.",
            _rows(Recipe, [("`base`", "str \\| list[str]", "none",
                            "recipe(s) this one starts from: packaged names or `.yaml` paths relative to this file; "
                            "removed once merged")]),
        ),
        "components": (
            "`tokenizer`, `backbone`, `conditioner` and `sampler` each name a component. "
            "`name` alone or `name:preset` is shorthand for `{name: ..., preset: ...}`.",
            component,
        ),
        "data": ("`data:` what the model is trained on (no data section: nothing to train on, "
                 "but the recipe can still be converted, sampled and dry-run).", _rows(DataSection)),
        "train": ("`train:` the optimiser, schedule, precision, checkpoints and periodic samples.",
                  _rows(TrainSection)),
        "eval": ("`eval:` the samples drawn after training and how they are judged.", _rows(EvalSection)),
    }


def render(section: str | None = None) -> str:
    """Markdown of one section, or the whole page (``docs/recipe-schema.md``) when ``None``."""
    found = sections()
    if section is not None:
        key = {"tokenizer": "components", "backbone": "components", "conditioner": "components",
               "sampler": "components", "top": "recipe"}.get(section, section)
        if key not in found:
            raise AvgkitError(f"no recipe section {section!r}{did_you_mean(section, found)}; sections: "
                              f"{', '.join(found)}")
        intro, table = found[key]
        return "\n".join([f"## {key}", "", intro, "", *table]) + "\n"
    parts = [HEADER]
    for name, (intro, table) in found.items():
        parts.append("\n".join([f"## {name}", "", intro, "", *table]) + "\n")
    return "\n".join(parts)
