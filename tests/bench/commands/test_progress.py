"""Progress reports: plain lines when stderr is not a terminal (a log, CI, nohup), a bar with the time left in one."""

from __future__ import annotations

import io
import re

from bench.cli import main
from bench.commands.common import Progress, duration


def test_without_a_terminal_a_line_every_tenth_with_the_time_left():
    out = io.StringIO()
    with Progress("lstm on trace-x", "origins", min_seconds=0, file=out) as progress:
        for done in range(1, 51):
            progress.update(done, 50)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("lstm on trace-x: 1/50 origins (2%), ") and lines[-1].startswith(
        "lstm on trace-x: 50/50 origins (100%), ")
    assert [re.search(r"\((\d+)%\)", line).group(1) for line in lines] == [
        "2", "10", "20", "30", "40", "50", "60", "70", "80", "90", "100"]
    assert all(re.search(r", ~\d+s left$", line) for line in lines[1:-1]), lines
    assert "\x1b" not in out.getvalue()  # plain text: no bar, no control codes


def test_without_a_terminal_lines_are_not_closer_than_min_seconds():
    out = io.StringIO()
    with Progress("grid", "units", file=out) as progress:  # quick work: the first and the last line only
        for done in range(1, 101):
            progress.update(done, 100)
    assert len(out.getvalue().splitlines()) == 2


def test_a_new_description_starts_the_next_job_over():
    out = io.StringIO()
    with Progress("sw_avg on the suite", "origins", min_seconds=0, file=out) as progress:
        for job in ("a@1", "b@1"):
            for done in range(1, 11):
                progress.update(done, 10, description=f"sw_avg on {job}")
    text = out.getvalue()
    assert "sw_avg on a@1: 10/10 origins (100%)" in text and "sw_avg on b@1: 1/10 origins (10%)" in text
    assert "sw_avg on b@1: 10/10 origins (100%)" in text


def test_under_a_terminal_the_bar_shows_the_time_left(monkeypatch):
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich treats the file as a terminal
    out = io.StringIO()
    with Progress("lstm on trace-x", "origins", file=out, transient=False) as progress:
        assert progress.bar is not None
        for done in range(1, 6):
            progress.update(done, 10)
        progress.bar.refresh()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "5/10" in text and "origins" in text and re.search(r"eta \d:\d\d:\d\d", text), text


def test_durations():
    assert [duration(s) for s in (0.4, 59, 61, 3599, 3600 * 2 + 65)] == ["0s", "59s", "1m01s", "59m59s", "2h01m"]


def test_run_reports_progress_in_a_log(capsys):
    """`python -m bench run ... 2> log`: the log shows the run's progress (it used to stay empty)."""
    assert main(["run", "--model", "sw_avg", "--dataset", "tiny-cpu-s1", "--no-track", "--horizon", "1000",
                 "--force"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"^sw_avg on tiny-cpu-s1: 1/\d+ origins \(\d+%\), \d+s elapsed", err, re.M), err
    assert re.search(r"^sw_avg on tiny-cpu-s1: (\d+)/\1 origins \(100%\)", err, re.M), err
