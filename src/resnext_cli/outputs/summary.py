"""The run report: counts what happened and decides the exit status."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

from rich.cells import cell_len
from rich.console import Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from resnext_cli.console import bar, printable
from resnext_cli.errors import ExitStatus
from resnext_cli.results import Classified, Failed, Record

HISTOGRAM_LABELS = 10


@dataclass
class RunSummary:
    """Counts of one run; its exit_status is what the process exits with."""

    where: str = ""  # device and precision, as the engine describes them: 'cpu, bf16'
    classified: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    top1: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None
    min_probability: float | None = None
    uncertain: int = 0
    resumed: int = 0  # inputs an earlier run already recorded (--resume)
    of: str = "labels"  # what the histogram counts: top-1 'labels' or 'categories'
    probabilities: list[float] = field(default_factory=list, repr=False)

    def add(self, record: Record) -> None:
        """Count one record."""
        if isinstance(record, Failed):
            self.failed[record.error_type] += 1
        else:
            assert isinstance(record, Classified)
            self.classified += 1
            # With --categories the histogram is of categories: what a person files under.
            if record.categories:
                self.top1[record.categories[0].name] += 1
                self.of = "categories"
            else:
                self.top1[record.top1.label] += 1
            self.probabilities.append(record.top1.probability)
            if record.uncertain:
                self.uncertain += 1

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
            f"({rate:.1f} img/s) on {self.where}"
        )
        if self.resumed:
            text += f"; {self.resumed} done before (--resume)"
        if self.failed:
            kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.failed.items()))
            text += f"; {sum(self.failed.values())} failed ({kinds})"
        return text

    def confidence_line(self) -> str:
        """How sure the model was: the median top-1 probability and the count under the bar."""
        if not self.probabilities:
            return ""
        text = f"top-1 probability: median {statistics.median(self.probabilities):.1%}"
        if self.min_probability is not None:
            text += (
                f"; {self.uncertain} of {self.classified} under {self.min_probability:.1%}"
                " (uncertain)"
            )
        return text

    def _others(self, top: int = HISTOGRAM_LABELS) -> str:
        """The last row's label: how many labels the chart leaves out."""
        return f"({len(self.top1) - min(top, len(self.top1))} other {self.of})"

    def histogram(self, *, width: int, label_width: int, top: int = HISTOGRAM_LABELS) -> Table:
        """The most common top-1 labels as a bar chart, bars up to *width* cells."""
        common = self.top1.most_common(top)
        table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 1, 0, 0))
        # Columns: label (cut with "…"), bar (exactly *width* cells at the peak), count, share.
        table.add_column(max_width=label_width, no_wrap=True)
        table.add_column(no_wrap=True)
        table.add_column(justify="right", no_wrap=True)
        table.add_column(justify="right", no_wrap=True)
        for label, count in common:
            table.add_row(
                Text(printable(label)),
                Text(bar(count / common[0][1], width), style="cyan"),
                str(count),
                Text(f"{count / self.classified:.1%}", style="dim"),
            )
        rest = self.classified - sum(count for _, count in common)
        if rest:
            table.add_row(
                Text(self._others(top), style="dim"),
                "",
                str(rest),
                Text(f"{rest / self.classified:.1%}", style="dim"),
            )
        return table

    def render(self, columns: int) -> RenderableType:
        """The end-of-run report for stderr: counts, speed, confidence and the label histogram.

        On a terminal narrower than the full chart, the bars get shorter (then the labels),
        so the counts and shares always show.
        """
        parts: list[RenderableType] = [Text(self.line())]
        if self.classified:
            parts.append(Text(self.confidence_line()))
            shown = min(HISTOGRAM_LABELS, len(self.top1))
            parts.append(
                Text(f"top-1 {self.of} ({shown} most common of {len(self.top1)}):", style="bold")
            )
            numbers = len(str(max(self.top1.values()))) + len("100.0%") + 3  # and the gaps
            names = [cell_len(printable(k)) for k in self.top1]
            if len(self.top1) > HISTOGRAM_LABELS:
                names.append(cell_len(self._others()))  # the last row is whole too
            labels = min(32, max(names))
            bar = max(4, min(30, columns - 2 - numbers - labels))
            labels = max(4, min(labels, columns - 2 - numbers - bar))
            chart = self.histogram(width=bar, label_width=labels)
            parts.append(Padding(chart, (0, 0, 0, 2), expand=False))
        return Group(*parts)
