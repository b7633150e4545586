"""console.py: the progress bar's rate and ETA columns, and names cut in the middle."""

from __future__ import annotations

import pytest
from rich.progress import Progress

from resnext_cli.console import EtaColumn, RateColumn, middle_ellipsis


def test_a_rate_and_an_eta_only_once_they_mean_something() -> None:
    now = [0.0]
    progress = Progress(get_time=lambda: now[0])
    task_id = progress.add_task("classify", total=100)
    task = progress.tasks[0]
    rate, eta = RateColumn(), EtaColumn()
    progress.advance(task_id, 8)  # the first batch, all at once, 0.001 s in
    now[0] = 0.001
    assert (rate.render(task).plain, eta.render(task).plain) == ("", "")
    now[0] = 1.9
    assert rate.render(task).plain == ""
    now[0] = 4.0  # 8 images in 4 s: 2 a second, 92 left: 46 s
    assert (rate.render(task).plain, eta.render(task).plain) == ("2.0 img/s", "eta 0:00:46")
    counted_id = progress.add_task("stdin", total=None)  # no total: no ETA
    progress.advance(counted_id, 8)
    counted = progress.tasks[-1]
    now[0] = 8.0
    assert (rate.render(counted).plain, eta.render(counted).plain) == ("2.0 img/s", "")


@pytest.mark.parametrize(
    ("text", "width", "shown"),
    [
        ("photos/img_0008.jpg", 40, "photos/img_0008.jpg"),
        ("photos/holiday/img_0008.jpg", 16, "photos/…0008.jpg"),
        ("abcdef", 1, "…"),
        ("abcdef", 5, "ab…ef"),
        ("日本語のファイル名.jpg", 10, "日本語…jpg"),  # 10 cells: 6 + 1 + 3
    ],
)
def test_middle_ellipsis_keeps_both_ends(text: str, width: int, shown: str) -> None:
    assert middle_ellipsis(text, width) == shown
