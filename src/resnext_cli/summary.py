"""The run report: counts what happened and decides the exit status."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from .errors import ExitStatus
from .results import Classified, Failed, Record


@dataclass
class RunSummary:
    """Counts of one run; its exit_status is what the process exits with."""

    device: str = ""
    precision: str = ""
    classified: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    top1: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None

    def add(self, record: Record) -> None:
        """Count one record."""
        if isinstance(record, Failed):
            self.failed[record.error_type] += 1
        else:
            assert isinstance(record, Classified)
            self.classified += 1
            self.top1[record.top1.label] += 1

    @property
    def total(self) -> int:
        """Every input that got a record."""
        return self.classified + sum(self.failed.values())

    @property
    def seconds(self) -> float:
        """Wall time from start to finish (or to now)."""
        return (self.finished or time.perf_counter()) - self.started

    @property
    def exit_status(self) -> ExitStatus:
        """0 when every input was classified, 1 when some failed, 2 when none matched."""
        if self.total == 0:
            return ExitStatus.USAGE
        return ExitStatus.SOME_FAILED if self.failed else ExitStatus.OK

    def line(self) -> str:
        """One line for stderr: what was done, how fast, where, and what failed."""
        rate = self.classified / self.seconds if self.seconds > 0 else 0.0
        text = (
            f"classified {self.classified} of {self.total} inputs in {self.seconds:.1f}s "
            f"({rate:.1f} img/s) on {self.device}, {self.precision}"
        )
        if self.failed:
            kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.failed.items()))
            text += f"; {sum(self.failed.values())} failed ({kinds})"
        return text
