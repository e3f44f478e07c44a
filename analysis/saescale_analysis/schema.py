"""Validating results files against the JSON Schema of "saescale.result/1".

The schema lives in the repository's ``schemas/`` directory, two levels above this package
(``analysis/saescale_analysis/../../schemas/``). ``jsonschema`` is imported lazily, so the rest of
the package works without it.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / "saescale.result-1.schema.json"

#: Longest error message printed; longer ones (which quote large instances) are cut.
MAX_MESSAGE = 240


@functools.cache
def load_schema() -> dict[str, Any]:
    """The results schema, read once from :data:`SCHEMA_FILE`."""
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


@functools.cache
def _validator() -> Any:
    from jsonschema import Draft202012Validator

    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _short(message: str) -> str:
    message = " ".join(message.split())  # one line
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def schema_errors(data: Any) -> list[tuple[str, str]]:
    """(JSON path, message) of every way ``data`` violates the schema, sorted by path."""
    errors = sorted(_validator().iter_errors(data), key=lambda e: (e.json_path, e.message))
    return [(e.json_path, _short(e.message)) for e in errors]


def read_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file. Raises OSError if unreadable, ValueError (naming it) if not JSON."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{os.fspath(path)}: invalid JSON: {e}") from None


def validate_file(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """Schema errors of one results file (empty if valid); see :func:`read_json` for raises."""
    return schema_errors(read_json(path))
