"""Analysis helpers for saescale results files (schema "saescale.result/1")."""

from .results import SCHEMA, FRAME_COLUMNS, load_result, load_results, to_frame
from .table import format_table, table_rows

__all__ = [
    "SCHEMA",
    "FRAME_COLUMNS",
    "load_result",
    "load_results",
    "to_frame",
    "format_table",
    "table_rows",
]
