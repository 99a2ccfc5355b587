"""The live display of the `aio88` command (rich, the aio88[cli] extra): the panel as
rendered from a tally, the printer on a terminal, and the real command in a pty."""

from __future__ import annotations

import io
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("rich")

from rich.console import Console

from aio88._cli import _live
from aio88._cli._output import Printer, Tally
from aio88._models import Video

AIO88 = [sys.executable, "-m", "aio88"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def video(task_id: str, status: str, progress: int | None = None) -> Video:
    return Video(_id=task_id, _status=status, _progress=progress)


def synthetic_tally(now: float) -> Tally:
    """2,000 tasks, 1,234 settled, a few in flight with and without progress."""
    tally = Tally(total=2000, done=1200, failed=34, bytes=123_400_000, started=now - 30)
    for task_id, status, progress, age in [
        ("task_fast", "in_progress", 90, 10.0),
        ("task_slow", "in_progress", 10, 20.0),
        ("task_new", "queued", None, 1.0),
        ("task_old", "queued", None, 25.0),
        ("task_ok", "completed", 100, 5.0),
    ]:
        tally.update(video(task_id, status, progress))
        tally.since[task_id] = now - age
    return tally


def render(tally: Tally, now: float, **options: bool) -> str:
    console = Console(record=True, width=100, file=io.StringIO())
    console.print(_live.panel(tally, _live.Rates(), title="aio88 demo", now=now, **options))
    return console.export_text()


def test_panel_shows_bar_rate_eta_counts_bytes_and_the_slowest_tasks() -> None:
    now = time.monotonic()
    tally = synthetic_tally(now)
    assert (tally.queued, tally.running, tally.downloading) == (2, 2, 1)
    text = render(tally, now)
    assert "aio88 demo" in text
    assert "1,234/2,000   62%" in text
    # No window yet: the whole run's pace, 1,234 tasks in 30 s; 766 to go at that pace.
    assert "41.1 tasks/s   ETA 0:19   elapsed 0:30   123.4 MB  4.1 MB/s" in text
    assert "queued 2   running 2   downloading 1   done 1,200   failed 34" in text
    assert "unconfirmed" not in text  # shown only when there are some
    rows = [line for line in text.splitlines() if "task_" in line]
    # Furthest from done first: the slowest pace among those reporting progress, then
    # those whose server reports none (oldest first), which would otherwise hide them.
    assert [row.split()[1] for row in rows] == ["task_slow", "task_fast", "task_old", "task_new"]
    assert "10%" in rows[0] and "0:20" in rows[0] and "running" in rows[0]
    assert "task_ok" not in text  # succeeded: counted as downloading, not listed
    final = render(tally, now, final=True)
    assert "task_" not in final and "1,234/2,000" in final


def test_rates_follow_a_recent_window() -> None:
    rates = _live.Rates()
    start = 1000.0
    assert rates.sample(start, start, 0, 0) == (0.0, 0.0)
    for second in range(1, 31):  # 10 tasks/s for 20 s, then 2 tasks/s
        finished = 10 * min(second, 20) + 2 * max(second - 20, 0)
        per_task, _ = rates.sample(start + second, start, finished, finished * 1000)
    assert per_task == pytest.approx((10 * 5 + 2 * 10) / 15)  # the last 15 s only
    assert _live.clock(None) == "-:--" and _live.clock(3725) == "1:02:05"


def test_printer_on_a_terminal_pins_the_panel_and_prints_a_summary_table() -> None:
    stream = FakeTerminal()
    printer = Printer(json_lines=False, stream=stream, title="aio88 run")
    assert printer.live
    printer.event("emulator", url="http://x")  # before the panel: shown
    tally = Tally(total=2)
    printer.progress(tally)
    printer.event("done", id="t1")  # under the panel, without -v: the panel stands for it
    printer.problem("failed", id="t2", error="boom")
    tally.done = tally.failed = 1
    printer.summary(tasks=2, failed=1, bytes=1234)
    text = ANSI.sub("", stream.getvalue())
    assert "emulator   url=http://x" in text
    assert "t1" not in text
    assert "failed     id=t2 error=boom" in text
    assert "aio88 run" in text and "2/2" in text
    assert re.search(r"│ bytes\s+│\s+1,234 │", text)  # the summary table
    printer.close()  # closing twice is harmless


def test_verbose_prints_events_above_the_panel() -> None:
    stream = FakeTerminal()
    printer = Printer(json_lines=False, verbose=1, stream=stream)
    printer.progress(Tally(total=1))
    printer.event("done", id="t1")
    printer.detail("create", id="c1")
    printer.close()
    text = ANSI.sub("", stream.getvalue())
    assert "done       id=t1" in text and "create     id=c1" in text


def test_quiet_and_json_stay_plain_on_a_terminal() -> None:
    for json_lines, quiet in ((False, True), (True, False)):
        stream = FakeTerminal()
        printer = Printer(json_lines=json_lines, quiet=quiet, stream=stream)
        assert not printer.live
        printer.progress(Tally(total=1))
        with printer.activity("t1") as show:
            show.task(video("t1", "in_progress", 5))
            show.bytes(1, 2)
        printer.summary(tasks=1)
        assert "\x1b" not in stream.getvalue() and "tasks" in stream.getvalue()


def test_wait_spinner_and_download_bar() -> None:
    stream = FakeTerminal()
    printer = Printer(json_lines=False, stream=stream)
    with printer.activity("task_1") as show:
        show.task(video("task_1", "queued"))
        show.task(video("task_1", "in_progress", 42))
        time.sleep(0.3)  # a refresh or two on rich's timer
    with printer.activity("task_1 downloading", download=True) as show:
        show.bytes(1_000_000, 4_000_000)
        time.sleep(0.3)
    text = ANSI.sub("", stream.getvalue())
    assert "task_1  in_progress" in text and "42%" in text
    assert "1.0/4.0 MB" in text


def capture_in_pty(args: list[str], env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    """Run ``aio88 ARGS`` with a pty as its terminal; its return code and all it wrote."""
    master, slave = os.openpty()
    process = subprocess.Popen(
        [*AIO88, *args], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its side
                break
            if not data:
                break
            chunks.append(data)
        code = process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_demo_in_a_terminal_shows_the_panel_and_piped_stays_plain(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIO88_")}
    env.update(TERM="xterm-256color", COLUMNS="100", LINES="40")
    env.pop("NO_COLOR", None)
    # Tasks of 2-3 s: redraws land while they run, also on a loaded machine.
    args = ["demo", "--tasks", "20", "--duration", "2", "3", "--out", str(tmp_path / "a")]
    code, raw = capture_in_pty(args, env)
    assert code == 0, raw
    assert "\x1b[" in raw  # drawn, in colour
    screen = ANSI.sub("", raw)
    for element in ("aio88 demo", "━", "tasks/s", "ETA", "elapsed", "MB/s", "queued", "running"):
        assert element in screen, element
    assert "slowest" in screen and "task_" in screen  # the slowest tasks, while in flight
    assert "20/20  100%" in screen and "done 20" in screen  # the last state stays
    assert re.search(r"│ succeeded\s+│\s+20 │", screen)  # the summary table
    assert "install aio88[cli]" not in screen
    piped = subprocess.run(
        [*AIO88, *args[:-1], str(tmp_path / "b")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert piped.returncode == 0
    assert "\x1b" not in piped.stdout + piped.stderr
    assert "done       id=task_" in piped.stdout and "  succeeded          20" in piped.stdout
