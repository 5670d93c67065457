"""The paper's studies as commands: each runs its points into ROOT/NAME/ (results.jsonl, table.md, plot.png).

An entry point (it drives the training loop); no component imports it. `report.py` turns every
study folder under a root into REPORT.md with verdicts computed from the numbers.
"""

from .config import Budget, StudyConfig
from .registry import STUDIES, get_study
from .report import write_report
from .runner import StudyOutcome, run_study

__all__ = ["STUDIES", "Budget", "StudyConfig", "StudyOutcome", "get_study", "run_study", "write_report"]
