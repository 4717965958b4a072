"""Load, merge and validate the run parameters.

One file, ``params.yaml``, holds every parameter of the paper's run. A run
configuration (``config/demo/params.yaml``) names only the keys it changes and is
deep-merged on top. The merged result is validated against
``workflow/schemas/params.schema.yaml`` before any stage runs.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import yaml

# The schema ships inside the package as a link to workflow/schemas, so an
# installed package and the Snakefile validate against the same file.
SCHEMA_PATH = Path(__file__).with_name("params.schema.yaml")


class ParamsError(ValueError):
    """An invalid parameter file or value. The message names the key and the fix."""


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read one YAML mapping, raising ParamsError for a missing or malformed file."""
    path = Path(path)
    if path.is_dir():
        raise ParamsError(
            f"parameter file {path} is a directory. Pass a YAML file, such as {path / 'params.yaml'}."
        )
    if not path.is_file():
        raise ParamsError(f"parameter file not found: {path}. Pass an existing YAML file.")
    try:
        # Reading from the open file makes PyYAML name it in the error's position lines.
        with path.open(encoding="utf-8") as stream:
            data = yaml.safe_load(stream)
    except yaml.YAMLError as error:
        raise ParamsError(f"invalid YAML in {path}: {error}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path} must contain a mapping of parameters, not {type(data).__name__}")
    return data


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``overlay`` merged in; nested mappings merge key by key."""
    merged = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _dotted(path: Sequence[Any]) -> str:
    return ".".join(str(part) for part in path) or "<top level>"


def _schema_at(schema: Mapping[str, Any], path: Sequence[Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    """Follow ``path`` through nested ``properties`` to the sub-schema of one key."""
    node = schema
    for part in path:
        if "$ref" in node:
            node = _resolve_ref(node["$ref"], root)
        if isinstance(part, int):
            node = node.get("items", {})
        else:
            node = node.get("properties", {}).get(part, {})
    if "$ref" in node:
        node = _resolve_ref(node["$ref"], root)
    return node


def _resolve_ref(ref: str, root: Mapping[str, Any]) -> Mapping[str, Any]:
    node: Any = root
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


def _describe_error(error: jsonschema.ValidationError, schema: Mapping[str, Any]) -> str:
    """Turn one jsonschema error into a sentence that names the key and the fix."""
    key = _dotted(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(_schema_at(schema, list(error.absolute_path), schema).get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, allowed, n=1)
            hint = f"unknown parameter '{_dotted([*error.absolute_path, name])}'"
            hints.append(hint + (f" (did you mean '{close[0]}'?)" if close else ""))
        return "; ".join(hints) + f". Allowed keys here: {', '.join(allowed)}."
    if error.validator == "enum":
        allowed = ", ".join(repr(value) for value in error.validator_value)
        return f"invalid value {error.instance!r} for '{key}': allowed values are {allowed}."
    if error.validator == "required":
        return f"missing parameter under '{key}': {error.message}. Add it (see params.yaml for the default)."
    if error.validator == "type":
        message = f"invalid type for '{key}': {error.instance!r} is not of type {error.validator_value!r}."
        if _is_number_text(error.instance) and "number" in str(error.validator_value):
            # PyYAML (YAML 1.1) reads 1e-3 as text. A decimal point and a signed exponent make it a number.
            message += f" Write it as a YAML number with a decimal point, such as {float(error.instance):.1e}."
        return message
    return f"invalid value {error.instance!r} for '{key}': {error.message}."


def _is_number_text(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def _nan_keys(value: Any, path: tuple[Any, ...] = ()) -> list[str]:
    """Return the dotted keys whose value is NaN (JSON Schema's number bounds let NaN through)."""
    if isinstance(value, float) and math.isnan(value):
        return [_dotted(path)]
    if isinstance(value, Mapping):
        return [key for name, item in value.items() for key in _nan_keys(item, (*path, name))]
    if isinstance(value, list):
        return [key for index, item in enumerate(value) for key in _nan_keys(item, (*path, index))]
    return []


# [min, max] pairs whose first value must not exceed the second.
RANGE_KEYS = ("demo.objects_per_image", "demo.image_size")


def _range_errors(params: Mapping[str, Any]) -> list[str]:
    errors = []
    for key in RANGE_KEYS:
        low, high = lookup(params, key)
        if low > high:
            errors.append(f"invalid value [{low}, {high}] for '{key}': it is [min, max], so write [{high}, {low}].")
    return errors


def validate_params(params: Mapping[str, Any], source: str = "parameters") -> None:
    """Raise ParamsError listing every invalid key of ``params``."""
    schema = load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(params), key=lambda e: list(map(str, e.absolute_path)))
    messages = [_describe_error(error, schema) for error in errors]
    messages += [f"invalid value nan for '{key}': write a number." for key in _nan_keys(params)]
    if not messages:
        messages = _range_errors(params)
    if messages:
        lines = "\n".join(f"  - {message}" for message in messages)
        raise ParamsError(f"invalid {source}:\n{lines}\nFix these keys and run again.")
    unknown_fig3 = params["report"]["fig3_variant"] not in params["models"]["variants"]
    if unknown_fig3:
        raise ParamsError(
            f"report.fig3_variant is {params['report']['fig3_variant']!r}, which is not in "
            f"models.variants {params['models']['variants']}. Add it there or choose one of them."
        )


def load_params(
    files: Sequence[str | os.PathLike], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Read and deep-merge parameter files in order, apply ``overrides``, validate."""
    if not files:
        raise ParamsError("no parameter file given. Pass params.yaml (and optionally a run configuration).")
    params: dict[str, Any] = {}
    for path in files:
        params = deep_merge(params, read_yaml(path))
    if overrides:
        params = deep_merge(params, overrides)
    validate_params(params, source=" + ".join(str(path) for path in files))
    return params


def lookup(params: Mapping[str, Any], dotted_key: str) -> Any:
    """Return the value at a dotted key such as ``train.epochs``."""
    node: Any = params
    for part in dotted_key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ParamsError(f"parameter '{dotted_key}' not found (missing '{part}').")
        node = node[part]
    return node


def canonical_json(params: Mapping[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def params_digest(params: Mapping[str, Any]) -> str:
    """Return a short SHA-256 of the parameters, used to tell resolved files apart."""
    return hashlib.sha256(canonical_json(params).encode()).hexdigest()[:12]
