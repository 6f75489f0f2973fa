"""A small JSON-Schema validator for the subset our manifest schema uses (standard library only).

Why not the `jsonschema` package: the catalog and manifest code must run inside Slicer before any
dependency is installed. The test suite checks that this validator and `jsonschema` agree.
Supported keywords: type, enum, required, properties, additionalProperties (false), items,
minItems, maxItems, minimum, maximum, exclusiveMinimum, exclusiveMaximum, multipleOf,
minLength, pattern.
"""

from __future__ import annotations

import re
from typing import Any

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def first_error(value: Any, schema: dict, path: str = "manifest") -> str | None:
    """The first violation as a sentence fragment naming its path, or None when valid."""
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        if not any(_is_type(value, n) for n in names):
            return f"{path} must be of type {' or '.join(names)}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{path} must be one of {schema['enum']}"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                return f"{path} lacks the required field {key!r}"
        props = schema.get("properties", {})
        if schema.get("additionalProperties") is False:
            extra = sorted(set(value) - set(props))
            if extra:
                return f"{path} has unknown field {extra[0]!r}"
        for key, sub in props.items():
            if key in value:
                err = first_error(value[key], sub, f"{path}.{key}")
                if err:
                    return err
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            return f"{path} needs at least {schema['minItems']} items"
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            return f"{path} allows at most {schema['maxItems']} items"
        if "items" in schema:
            for i, item in enumerate(value):
                err = first_error(item, schema["items"], f"{path}[{i}]")
                if err:
                    return err
    if _is_type(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            return f"{path} must be at least {schema['minimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            return f"{path} must be at most {schema['maximum']}"
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            return f"{path} must be greater than {schema['exclusiveMinimum']}"
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            return f"{path} must be less than {schema['exclusiveMaximum']}"
        if "multipleOf" in schema and value % schema["multipleOf"]:
            return f"{path} must be a multiple of {schema['multipleOf']}"
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            return f"{path} must not be empty"
        if "pattern" in schema and not re.search(schema["pattern"], value):
            return f"{path} has an invalid value {value!r}"
    return None
