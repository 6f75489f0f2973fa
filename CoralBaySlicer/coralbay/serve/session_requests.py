"""What a client may ask of an interactive session, checked field by field before it is journaled.

Why a whitelist: the engine's own protocol takes file paths (`open`, `scribble`, `segment`,
`labels`); a client must never choose a path on the server. Here each request type has its
fields and types; strokes arrive as crops (`crops.py`) that the server writes to its own files.
"""

from __future__ import annotations

import math
import re

from coralbay.errors import InputError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.()-]{0,63}$")
DIGEST = re.compile(r"^[0-9a-f]{64}$")
CROP_REQUESTS = ("scribble", "segment")
FIELDS: dict[str, dict[str, str]] = {
    "open": {"image": "digest"},
    "point": {"lps": "point", "positive": "bool", "name": "name"},
    "box": {"lower": "point", "upper": "point", "name": "name"},
    "scribble": {"crop": "crop", "positive_value": "int", "negative_value": "int", "name": "name"},
    "segment": {"crop": "crop", "value": "int", "name": "name"},
    "start": {"name": "name", "value": "int", "propose": "bool"},
    "propose": {"name": "name"}, "undo": {"name": "name"}, "redo": {"name": "name"}, "accept": {"name": "name"},
    "status": {},
}
REQUIRED = {"open": ("image",), "point": ("lps",), "box": ("lower", "upper"), "scribble": ("crop",), "segment": ("crop",),
            "start": ("name",)}


def _check(kind: str, field: str, value: object) -> None:
    rule = FIELDS[kind][field]
    ok = {
        "point": lambda v: isinstance(v, list) and len(v) == 3 and all(
            isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in v),
        "bool": lambda v: isinstance(v, bool),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255,
        "name": lambda v: isinstance(v, str) and bool(NAME.match(v)),
        "crop": lambda v: isinstance(v, dict),
        "digest": lambda v: isinstance(v, str) and bool(DIGEST.match(v)),
    }[rule](value)
    if not ok:
        what = {"point": "three finite numbers (mm, LPS)", "bool": "true or false", "int": "a whole number 0-255",
                "name": "a name of letters, digits, spaces, . _ - ( ) (at most 64)", "crop": "a crop object",
                "digest": "the SHA-256 of an uploaded image (64 hex digits)"}[rule]
        raise InputError(f"The {kind} request's {field} must be {what}.")


def check_request(body: object) -> tuple[int, dict]:
    """(sequence number, the request without it); one sentence for anything not allowed."""
    if not isinstance(body, dict):
        raise InputError("A request is a JSON object.")
    seq = body.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= 10**9:
        raise InputError("A request needs its sequence number seq (1, 2, 3, ... per session).")
    kind = body.get("type")
    if kind not in FIELDS:
        raise InputError(f"The request type must be one of {', '.join(FIELDS)}.")
    request = {"type": kind}
    for field, value in body.items():
        if field in ("seq", "type"):
            continue
        if field not in FIELDS[kind]:
            raise InputError(f"The {kind} request has no field {field!r}.")
        _check(kind, field, value)
        request[field] = value
    missing = [f for f in REQUIRED.get(kind, ()) if f not in request]
    if missing:
        raise InputError(f"The {kind} request needs {', '.join(missing)}.")
    return seq, request
