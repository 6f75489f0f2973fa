"""Reading small JSON files (label tables, mappings, manifests) with one-sentence errors.

Standard library only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from coralbay.errors import CoralBayError


def read_json(path: str | os.PathLike, what: str, error: type[CoralBayError] = CoralBayError) -> Any:
    """Parse `path`; a missing or unreadable file raises `error` naming it as `what`."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"The {what} {p} does not exist.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"The {what} {p} is not readable JSON ({exc}).") from None
