"""The stability report of a sweep: ``build_report(SWEEP_DIR)`` or ``normlab-report SWEEP_DIR``.

Reads each run's TensorBoard event files and ``summary.json``, groups runs by every override
except the seed, and writes ``report.md`` with PNG figures into the sweep directory.
"""

from normlab.report.build import Report, build_report
from normlab.report.events import Series, read_scalars
from normlab.report.outcome import Outcome, outcome
from normlab.report.sweep import Run, load_runs

__all__ = ["Outcome", "Report", "Run", "Series", "build_report", "load_runs", "outcome", "read_scalars"]
