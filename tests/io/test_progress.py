"""Progress a person can see (agent/io/progress.py, agent/io/stage_line.py): a bar and a live
stage line on a real pty, plain rate-limited lines with no carriage return on a pipe."""

from __future__ import annotations

import io
import logging
import re

import pytest

from agent.io.progress import BarProgress, LogProgress, format_duration, open_progress
from agent.io.stage_line import StageLine
from tests.terminal import python, run_in_pty, run_piped


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_format_duration():
    assert [format_duration(s) for s in (0, 42.9, 185, 3723)] == ["0s", "42s", "3:05",
                                                                  "1:02:03"]


def test_bar_fits_the_width_shows_eta_and_loss_and_limits_redraws():
    out, clock = io.StringIO(), FakeClock()
    bar = BarProgress(out, 100, "prge q=2", clock=clock, min_interval_s=0.5, width=60)
    bar.update(1, loss=2.5)
    clock.now += 1.0
    bar.update(2, loss=2.25)  # one step a second: 98 to go
    for step in range(3, 10):  # within the interval: not drawn
        clock.now += 0.01
        bar.update(step, loss=2.0)
    frames = out.getvalue().split("\r")[1:]
    assert len(frames) == 2
    assert all(len(f) == 59 for f in frames)  # padded to the width, never wrapping
    assert "2/100 2%" in frames[1] and "~1:38 left" in frames[1] and "loss 2.25" in frames[1]
    assert "|#" in frames[1] or "| " in frames[1]
    clock.now += 0.01
    bar.update(100, loss=1.0)  # the last step always draws
    bar.close()
    assert out.getvalue().endswith("\n") and "100/100 100%" in out.getvalue()


def test_bar_on_a_narrow_terminal_drops_the_bar_not_the_numbers():
    out = io.StringIO()
    bar = BarProgress(out, 10, "a long description of the job", clock=FakeClock(), width=40)
    bar.update(3, loss=1.0)
    frame = out.getvalue().split("\r")[-1]
    assert "|" not in frame and len(frame) <= 39 and frame.startswith("a long description")


def test_log_lines_are_plain_and_at_most_every_n_seconds():
    out, clock = io.StringIO(), FakeClock()
    log = LogProgress(out, 1000, "prge q=2", clock=clock, every_s=30.0)
    for step in range(1, 1001):  # 1000 steps of 0.125 s: 125 s
        clock.now += 0.125
        log.update(step, loss=1.5)
    log.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 5  # at 30, 60, 90 and 120 s, then the last one at close
    assert lines[-1].startswith("prge q=2: 1000/1000 (100%), 2:05 elapsed")
    assert "loss 1.5" in lines[0]


def test_a_stage_line_times_each_stage_and_prints_warnings_above_it():
    out, clock = io.StringIO(), FakeClock()
    handler = StageLine(out, "exporter", clock=clock, tick_s=None, width=80)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("exporter.test_stage_line")
    logger.propagate, logger.level = False, logging.INFO
    logger.addHandler(handler)
    try:
        logger.info("lowering train program: S1, S2")
        clock.now += 95
        assert handler.live_text().endswith("lowering train program: S1, S2 … 1:35")
        logger.warning("a delegate is missing")
        logger.info("lowering infer program")
        clock.now += 3
    finally:
        logger.removeHandler(handler)
        handler.close()
    text = out.getvalue()
    assert "✓ lowering train program: S1, S2 (1:35)\n" in text
    assert "WARNING a delegate is missing\n" in text
    assert "✓ lowering infer program (3s)\n" in text and text.endswith("total 1:38\n")


_BAR_SCRIPT = """
import sys, time
from agent.io.progress import open_progress
bar = open_progress(sys.stderr, 40, "demo", every_s=0.2)
for step in range(1, 41):
    time.sleep(0.01)
    bar.update(step, loss=3.0 - step / 20)
bar.close()
print("done")
"""


def test_on_a_pty_the_bar_is_drawn_in_place():
    code, text = run_in_pty(python(_BAR_SCRIPT), timeout=60)
    assert code == 0, text
    assert "\rdemo |" in text and "40/40 100%" in text and "loss" in text
    assert text.rstrip().endswith("done")


def test_on_a_pipe_there_are_no_carriage_returns():
    proc = run_piped(python(_BAR_SCRIPT), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "|" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert 1 <= len(lines) <= 4 and lines[-1].startswith("demo: 40/40 (100%)")  # ~0.4 s, 0.2 s


_STAGE_SCRIPT = """
import logging, sys, time, warnings
from agent.io.stage_line import stage_logging
with stage_logging(sys.stderr, "INFO", "exporter"):
    log = logging.getLogger("exporter.lower")
    log.info("lowering train program")
    time.sleep(2.2)  # the ticker redraws the elapsed time each second
    warnings.warn("torch says something")
    log.info("lowering infer program")
print("wrote bundle")
"""


def test_export_stages_live_on_a_pty_and_plain_on_a_pipe():
    code, text = run_in_pty(python(_STAGE_SCRIPT), timeout=60)
    assert code == 0, text
    assert re.search(r"\r\[\d+s\] lowering train program … [12]s", text)  # redrawn as it ran
    assert re.search(r"✓ lowering train program \([23]s\)\r\n", text)
    assert "✓ lowering infer program" in text and "total" in text
    # A Python warning is a line of its own above the live line, not glued to its end.
    assert re.search(r"\r {20,}\rWARNING .*UserWarning: torch says something\r\n", text), text
    proc = run_piped(python(_STAGE_SCRIPT), timeout=60)
    assert proc.returncode == 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("INFO")]
    assert lines == ["INFO lowering train program", "INFO lowering infer program"]  # as before
    assert "UserWarning: torch says something" in proc.stderr


@pytest.mark.parametrize("mode,kind", [("bar", BarProgress), ("log", LogProgress)])
def test_open_progress_modes(mode, kind):
    assert isinstance(open_progress(io.StringIO(), 5, "x", mode=mode), kind)
    assert isinstance(open_progress(io.StringIO(), 5, "x"), LogProgress)  # not a terminal
