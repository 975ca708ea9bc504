"""Declared settings: one pydantic model per steering method and per scorer.

A method's or scorer's settings are declared once, as a :class:`Settings` model whose
fields carry a :class:`Check` (how a value is read and what JSON Schema it has) and a
description. From that one declaration come:

- validation, with SteerLab's one-sentence errors naming the source and the field
  (each :class:`Check` calls the readers of :mod:`engine.fields`, which raise
  :class:`~engine.errors.SteerLabError`; pydantic lets that through untouched);
- plain data for storage (:meth:`Settings.plain`);
- the dashboard's form fields (:func:`form_fields`);
- the JSON Schema of experiment files (:mod:`engine.spec_schema`).

This module is torch-free: it only knows about plain values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self, get_args, get_origin

from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler, GetJsonSchemaHandler, ValidationError
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from engine.fields import (
    MAX_COEFFICIENT,
    MAX_NAME_CHARS,
    Where,
    as_bool,
    as_choice,
    as_coefficient,
    as_float,
    as_int,
    as_int_list,
    as_list,
    as_mapping,
    as_name,
    as_str,
    check_keys,
)

FormKind = Literal["vector", "layers", "float", "int", "choice", "text", "texts", "bool"]


@dataclass(frozen=True)
class FieldInfo:
    """One setting, described for forms (the dashboard builds widgets from it)."""

    name: str
    kind: FormKind
    default: Any = None
    help: str = ""
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Check:
    """How one declared field is read: a reader of :mod:`engine.fields`, its JSON Schema and its widget.

    Used as ``Annotated[float, Check(...)]`` metadata. The reader gets the field's
    :class:`Where` (from the validation context), so its error names the field.
    """

    read: Callable[..., Any]
    schema: Mapping[str, Any]
    form: FormKind
    choices: tuple[str, ...] = ()
    # The reader also gets the validation info: the fields validated before this one
    # (``info.data``) and the caller's context (``info.context``), for checks across fields.
    with_info: bool = False

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.with_info_plain_validator_function(self._validate)

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return dict(self.schema)

    def _validate(self, value: Any, info: core_schema.ValidationInfo) -> Any:
        context = info.context if isinstance(info.context, Mapping) else {}
        where: Where = context.get("where") or Where("settings")
        here = where.child(info.field_name or "value")
        return self.read(value, here, info) if self.with_info else self.read(value, here)


class Settings(BaseModel):
    """Base of every declared settings model: frozen, and no field it does not declare."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    # What a message says to do about a missing required field, where "add it" is too little.
    missing_fixes: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def checked(cls, raw: Any, where: Where, context: Mapping[str, Any] | None = None) -> Self:
        """Validate plain data (a file's or a form's) into settings; errors are one sentence naming the field.

        ``context`` reaches the checks that need more than their own value (see :attr:`Check.with_info`).
        """
        data = _fold_dotted(cls, as_mapping(raw, where))
        check_keys(data, tuple(cls.model_fields), where)
        for name, info in cls.model_fields.items():
            if info.is_required() and data.get(name) is None:
                where.child(name).fail("is missing", cls.missing_fixes.get(name, "add it"))
        # A field whose default is "unset" may also be written as null (YAML's empty value).
        data = {k: v for k, v in data.items() if v is not None or _default_of(cls, k) is not None}
        try:
            return cls.model_validate(dict(data), context={**(context or {}), "where": where})
        except ValidationError as exc:  # a check pydantic made itself (a declaration without a Check)
            error = exc.errors()[0]
            place = where
            for part in error["loc"]:
                place = place.child(part if isinstance(part, int) else str(part))
            place.fail(str(error["msg"]).rstrip("."), "fix the value")

    def plain(self) -> dict[str, Any]:
        """The settings as plain data (tuples as lists, unset optional fields left out), for JSON or YAML."""
        return self.model_dump(mode="json", exclude_none=True)


def _default_of(model: type[Settings], key: Any) -> Any:
    info = model.model_fields.get(key) if isinstance(key, str) else None
    return "required" if info is None or info.is_required() else info.default


def _fold_dotted(model: type[Settings], raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """Accept a form's flattened ``outer.inner`` keys for a nested declaration, as well as a nested mapping."""
    outers = [name for name, info in model.model_fields.items() if _nested_model(info.annotation) is not None]
    if not outers or not any(isinstance(key, str) and "." in key for key in raw):
        return raw
    out: dict[str, Any] = {}
    folded: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        outer, dot, inner = key.partition(".") if isinstance(key, str) else (key, "", "")
        if dot and outer in outers:
            folded.setdefault(outer, {})[inner] = value
        else:
            out[key] = value
    for outer, inner_values in folded.items():
        given = out.get(outer)
        out[outer] = {**(given if isinstance(given, Mapping) else {}), **inner_values}
    return out


def where_of(info: core_schema.ValidationInfo) -> Where:
    """The place being validated, for a model validator's errors across fields."""
    context = info.context if isinstance(info.context, Mapping) else {}
    where = context.get("where")
    return where if isinstance(where, Where) else Where("settings")


def nested(model: type[Settings]) -> Check:
    """A field that is itself a declared settings model (a conditional edit's ``condition``)."""
    return Check(lambda value, where: model.checked(value, where), settings_schema(model), "text")


def form_fields(model: type[Settings], prefix: str = "") -> tuple[FieldInfo, ...]:
    """The form fields of a declaration, in declaration order; nested models flatten to ``outer.inner``."""
    out: list[FieldInfo] = []
    for name, info in model.model_fields.items():
        check = next((m for m in info.metadata if isinstance(m, Check)), None)
        sub = _nested_model(info.annotation)
        if sub is not None:
            out.extend(form_fields(sub, f"{prefix}{name}."))
            continue
        form, choices = (check.form, check.choices) if check is not None else _inferred_form(info.annotation)
        if form is None:
            continue  # a setting no widget can edit: files only
        if not info.is_required() and info.default is None:
            continue  # unset means "decided later" (a condition's layer): no widget can say that
        default = None if info.is_required() else info.default
        if default is None and info.examples:
            default = info.examples[0]  # a required field's form starts from its first example
        if isinstance(default, tuple):
            default = list(default)
        out.append(FieldInfo(f"{prefix}{name}", form, default, info.description or "", choices))
    return tuple(out)


def _inferred_form(annotation: Any) -> tuple[FormKind | None, tuple[str, ...]]:
    """The widget of a plainly typed field (a plugin may declare ``factor: float = 1.0`` without a Check)."""
    if get_origin(annotation) is Literal:
        return "choice", tuple(str(a) for a in get_args(annotation))
    simple: dict[Any, FormKind] = {bool: "bool", int: "int", float: "float", str: "text"}
    if annotation in simple:
        return simple[annotation], ()
    if get_origin(annotation) in (tuple, list) and get_args(annotation)[:1] == (str,):
        return "texts", ()
    return None, ()


def _nested_model(annotation: Any) -> type[Settings] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, Settings) else None


def settings_schema(model: type[Settings]) -> dict[str, Any]:
    """The JSON Schema of one declaration's mapping (nested declarations inlined)."""
    schema = model.model_json_schema()
    schema["additionalProperties"] = False
    return schema


# A reference to a schema that only exists once every registry is known (the methods, the
# scorers): pydantic resolves "$ref"s itself, so a declaration writes this placeholder and
# engine.spec_schema turns it into a "$ref" to its "$defs".
_LATER_REF = "x-steerlab-ref"


def later_ref(name: str) -> dict[str, Any]:
    return {_LATER_REF: name}


def resolve_later_refs(schema: Any) -> Any:
    """``schema`` with every :func:`later_ref` placeholder made a ``$ref`` to ``#/$defs/<name>``."""
    if isinstance(schema, dict):
        if set(schema) == {_LATER_REF}:
            return {"$ref": f"#/$defs/{schema[_LATER_REF]}"}
        return {key: resolve_later_refs(value) for key, value in schema.items()}
    if isinstance(schema, list):
        return [resolve_later_refs(item) for item in schema]
    return schema


# --- the checks the declarations use -------------------------------------------------

TEXT = Check(as_str, {"type": "string", "minLength": 1}, "text")
NAME = Check(as_name, {"type": "string", "minLength": 1, "maxLength": MAX_NAME_CHARS}, "text")
VECTOR = Check(
    as_str, {"type": "string", "minLength": 1, "description": "The name of one of the experiment's vectors."}, "vector"
)
LAYERS = Check(
    as_int_list,
    {
        "anyOf": [
            {"type": "integer"},
            {"type": "array", "items": {"type": "integer"}, "minItems": 1, "uniqueItems": True},
        ]
    },
    "layers",
)
COEFFICIENT = Check(
    as_coefficient, {"type": "number", "minimum": -MAX_COEFFICIENT, "maximum": MAX_COEFFICIENT}, "float"
)
FLAG = Check(as_bool, {"type": "boolean"}, "bool")


def choice(options: Sequence[str]) -> Check:
    return Check(
        lambda value, where: as_choice(value, options, where), {"enum": list(options)}, "choice", tuple(options)
    )


def whole(minimum: int | None = None, maximum: int | None = None) -> Check:
    return Check(
        lambda value, where: as_int(value, where, minimum, maximum), _bounded("integer", minimum, maximum), "int"
    )


def number(minimum: float | None = None, maximum: float | None = None) -> Check:
    return Check(
        lambda value, where: as_float(value, where, minimum, maximum), _bounded("number", minimum, maximum), "float"
    )


def texts(
    single: bool = False, lowercase: bool = False, what: str = "text", verb: str = "give", allow_empty: bool = False
) -> Check:
    """A list of texts, non-empty unless ``allow_empty`` (``single``: one text is also accepted, as a list of one)."""

    def read(value: Any, where: Where) -> tuple[str, ...]:
        if allow_empty and not value:
            return ()
        items = [value] if single and isinstance(value, str) else list(as_list(value, where))
        if not items:
            where.fail("is an empty list", f"{verb} at least one {what}")
        out = tuple(as_str(item, where.child(i)) for i, item in enumerate(items))
        return tuple(t.strip().lower() for t in out) if lowercase else out

    listed = {"type": "array", "items": {"type": "string"}, "minItems": 0 if allow_empty else 1}
    return Check(read, {"anyOf": [{"type": "string"}, listed]} if single else listed, "texts")


def _bounded(kind: str, minimum: float | None, maximum: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": kind}
    if minimum is not None:
        out["minimum"] = minimum
    if maximum is not None:
        out["maximum"] = maximum
    return out
