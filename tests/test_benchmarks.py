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
