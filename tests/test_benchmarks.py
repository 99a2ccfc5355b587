"""Every benchmark runs at a tiny size, so the scripts never rot. Nothing is timed here."""

from __future__ import annotations

from benchmarks import bench_scale, bench_schedule


def test_bench_schedule_smoke() -> None:
    """The schedule simulation runs every policy and model and renders its table."""
    results = bench_schedule.run(20, seed=1)
    assert {r.model for r in results} == {"linear", "curved", "stepped", "none"}
    assert all(r.requests_per_task >= 1 and r.mean_delay >= 0 for r in results)
    assert "docs tiers" in bench_schedule.table(results)


async def test_bench_scale_smoke() -> None:
    """The scale benchmark measures memory and scheduler CPU at a small size."""
    results = await bench_scale.run([200])
    assert results[0]["bytes_per_task"] > 0
    assert results[0]["polls"] == 600
    assert "tracked tasks" in bench_scale.table(results)


def test_bench_schedule_cli(capsys: object) -> None:
    """The command line prints the table."""
    bench_schedule.main(["--tasks", "5"])
    bench_scale.main(["--sizes", "50", "--json"])
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "requests/task" in out and '"bytes_per_task"' in out


def test_bench_download_smoke() -> None:
    """The download benchmark runs every client once on a tiny file and checks each copy."""
    import shutil

    import pytest

    from benchmarks import bench_download

    if not shutil.which("nginx"):
        pytest.skip("the download benchmark needs nginx (CI installs it)")
    report = bench_download.run(
        [1], rounds=1, chunks=[1 << 20], clients=["aio88", "openai-default", "aio88-session"]
    )
    clients = {row["client"] for row in report["rows"]}
    assert clients == {"aio88", "openai-default", "aio88-session"}
    assert report["sweep"][0]["mb_s"] > 0
    assert "MB/s" in bench_download.table(report)


def test_bench_poll_smoke() -> None:
    """The poll benchmark runs every client (nginx, or the emulator when it is missing)."""
    from benchmarks import bench_poll

    report = bench_poll.run(50, 8, 1, bench_poll.CLIENTS)
    assert {row["client"] for row in report["rows"]} == set(bench_poll.CLIENTS)
    assert all(row["requests_per_s"] > 0 for row in report["rows"])
    assert "aio88 is faster by" in bench_poll.table(report)


def test_bench_decode_smoke() -> None:
    """The decode benchmark times every shape with every decoder."""
    from benchmarks import bench_decode

    rows = bench_decode.run(20)
    assert [r["shape"] for r in rows] == list(bench_decode.BODIES)
    assert "aio88 vs openai" in bench_decode.table(rows)
