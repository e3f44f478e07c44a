"""Make analysis/saescale_analysis importable without setting PYTHONPATH."""

import sys
from pathlib import Path

ANALYSIS_DIR = Path(__file__).resolve().parents[2] / "analysis"
if str(ANALYSIS_DIR) not in sys.path:
    sys.path.insert(0, str(ANALYSIS_DIR))
