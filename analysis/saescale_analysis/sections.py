"""A report section: what `report` renders to Markdown and HTML (figures are PNG files)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class Section:
    """One part of a report.

    paragraphs: plain text (inline `code` allowed), one paragraph each.
    tables: (caption, frame) pairs; frames are rendered with their column names as headers.
    figures: (caption, path) pairs; PNG files inside the report's output directory.
    """

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[tuple[str, Path]] = field(default_factory=list)
