"""Analysis helpers for saescale results files (schema "saescale.result/1")."""

from .results import SCHEMA, FRAME_COLUMNS, load_result, load_results, to_frame
from .schema import SCHEMA_FILE, schema_errors, validate_file
from .table import format_table, table_rows

__all__ = [
    "SCHEMA",
    "FRAME_COLUMNS",
    "load_result",
    "load_results",
    "to_frame",
    "SCHEMA_FILE",
    "schema_errors",
    "validate_file",
    "format_table",
    "table_rows",
]
