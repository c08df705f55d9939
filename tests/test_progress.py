"""Plain progress lines (batch logs): the rate a resumed run shows counts only its own steps."""

from __future__ import annotations

import re

from cxrad import progress


def _rates(text: str) -> list[float]:
    return [float(r) for r in re.findall(r"\(([0-9.]+)/s\)", text)]


def test_a_resumed_task_does_not_count_earlier_steps_in_its_rate(monkeypatch, capsys):
    """Resuming at epoch 60 of 250 logged '(6439150.9/s)': the 60 epochs of the earlier run were
    divided by the microseconds this process had run."""
    monkeypatch.setenv("CXRAD_NO_PROGRESS", "1")
    clock = iter([100.0, 100.0, 100.001, 102.0, 104.0])   # t0, resume, its log line, two steps 2 s apart
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    with progress.task("ndm", 250, log_every=0) as bar:
        bar.advance(60, info="resumed at epoch 60", resumed=True)
        bar.advance(1)
        bar.advance(1)
    err = capsys.readouterr().err
    assert "ndm: 60/250 (0.0/s) resumed at epoch 60" in err, err
    assert _rates(err)[1:] == [0.5, 0.5], err          # 1 step in 2 s, 2 steps in 4 s


def test_a_fresh_task_rate_is_steps_per_second(monkeypatch, capsys):
    monkeypatch.setenv("CXRAD_NO_PROGRESS", "1")
    clock = iter([10.0, 14.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    with progress.task("decode", 8, log_every=0) as bar:
        bar.advance(2)
    assert _rates(capsys.readouterr().err) == [0.5]
