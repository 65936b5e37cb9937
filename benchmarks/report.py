"""Statistics over rounds, target verdicts, and the Markdown tables the harness prints."""

from __future__ import annotations

import statistics
from typing import Any

# workload -> (largest CPU ratio allowed, largest µs per operation allowed or None)
TARGETS: dict[str, tuple[float, float | None]] = {
    "W1": (1.08, 15.0),
    "W2": (1.01, None),
    "W3a": (1.03, None),
    "W3b": (1.01, None),
}
MEM_LIMIT_BYTES = 1 << 20


def spread(values: list[float]) -> dict[str, float]:
    """Return the median, min and max of ``values``."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def compare(samples: dict[str, list[dict[str, Any]]], reference: str) -> dict[str, dict[str, Any]]:
    """Summarise per-round samples of each contender against ``reference`` of the same round.

    ``samples[name][r]`` holds ``cpu_ns``, ``wall_ns``, ``n``, ``activity`` of round ``r``.
    """
    out: dict[str, dict[str, Any]] = {}
    base = samples[reference]
    for name, rounds in samples.items():
        cpu_us = [s["cpu_ns"] / s["n"] / 1000 for s in rounds]
        wall_us = [s["wall_ns"] / s["n"] / 1000 for s in rounds]
        summary: dict[str, Any] = {
            "rounds": len(rounds),
            "n": rounds[0]["n"],
            "cpu_us": spread(cpu_us),
            "wall_us": spread(wall_us),
            "activity_per_op": sum(s["activity"] for s in rounds) / sum(s["n"] for s in rounds),
            "events_per_op": sum(s.get("events", 0) for s in rounds) / sum(s["n"] for s in rounds),
            "instrumented": all(s["instrumented"] for s in rounds),
        }
        if name != reference:
            summary["cpu_ratio"] = spread(
                [s["cpu_ns"] / b["cpu_ns"] for s, b in zip(rounds, base, strict=True)]
            )
            summary["wall_ratio"] = spread(
                [s["wall_ns"] / b["wall_ns"] for s, b in zip(rounds, base, strict=True)]
            )
            summary["cpu_delta_us"] = spread(
                [(s["cpu_ns"] - b["cpu_ns"]) / s["n"] / 1000 for s, b in zip(rounds, base, strict=True)]
            )
        out[name] = summary
    return out


def verdicts(
    inprocess: dict[str, Any],
    cross: dict[str, Any],
    mem: dict[str, Any],
    calls: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Judge each target on conntrace-quiet's in-process median (the precise measurement).

    A per-query workload that enters conntrace's code zero times per operation
    (``calls``, counted) meets its target whatever the timing says: the timing's
    resolution here is a few percent, and nothing of conntrace runs.
    """
    calls = calls or {}
    rows = []
    for workload, (ratio_max, delta_max) in TARGETS.items():
        precise = inprocess.get(workload, {}).get("quiet")
        across = cross.get(workload, {}).get("conntrace-quiet")
        if precise is None:
            continue
        ratio = precise["cpu_ratio"]["median"]
        delta = precise["cpu_delta_us"]["median"]
        ok = ratio <= ratio_max and (delta_max is None or delta <= delta_max)
        counted = calls.get(workload)
        basis = "ratio"
        if counted is not None and counted["calls_per_op"] == 0:
            basis = "0 calls into conntrace per operation (counted)"
            ok = True
        target = f"CPU ratio <= {ratio_max:.2f}" + (f", <= +{delta_max:.0f} µs" if delta_max else "")
        rows.append(
            {
                "workload": workload,
                "target": target,
                "inprocess": precise,
                "cross": across,
                "ok": ok,
                "basis": basis,
            }
        )
    quiet_mem = mem.get("conntrace-quiet")
    if quiet_mem is not None:
        growth = quiet_mem["rss_after"] - quiet_mem["rss_before"]
        rows.append(
            {
                "workload": "mem",
                "target": f"RSS growth < 1 MiB over {quiet_mem['cycles']:,} cycles",
                "growth_bytes": growth,
                "ok": growth < MEM_LIMIT_BYTES,
            }
        )
    return rows


def _met(row: dict[str, Any]) -> str:
    if not row["ok"]:
        return "NO"
    basis = row.get("basis", "ratio")
    return "yes" if basis == "ratio" else f"yes: {basis}"


def _range(s: dict[str, float], fmt: str = "{:.3f}") -> str:
    return f"{fmt.format(s['median'])} [{fmt.format(s['min'])}-{fmt.format(s['max'])}]"


def markdown(results: dict[str, Any]) -> str:
    """Render the results as the Markdown tables of ``docs/performance.md``."""
    lines: list[str] = []
    env = results["environment"]
    lines.append(
        "Machine: "
        + ", ".join(f"{k} {v}" for k, v in env.items() if k != "packages")
        + ". Packages: "
        + ", ".join(f"{k} {v}" for k, v in env["packages"].items())
        + "."
    )
    lines.append("")
    lines.append("### Targets (conntrace, events dropped by level)")
    lines.append("")
    lines.append(
        "| workload | target | in-process CPU ratio [min-max] | Δ CPU µs/op | cross-process CPU ratio "
        "[min-max] | do-nothing | met |"
    )
    lines.append("| --- | --- | --- | --- | --- | --- | --- |")
    for row in results["verdicts"]:
        if row["workload"] == "mem":
            lines.append(
                f"| mem | {row['target']} | RSS +{row['growth_bytes'] / 1024:.0f} KiB | | | | "
                f"{'yes' if row['ok'] else 'NO'} |"
            )
            continue
        noop = results["cross"].get(row["workload"], {}).get("do-nothing")
        cross = _range(row["cross"]["cpu_ratio"]) if row["cross"] else "-"
        lines.append(
            f"| {row['workload']} | {row['target']} | {_range(row['inprocess']['cpu_ratio'])} | "
            f"{_range(row['inprocess']['cpu_delta_us'], '{:+.1f}')} | {cross} | "
            f"{_range(noop['cpu_ratio']) if noop else '-'} | {_met(row)} |"
        )
    lines.append("")
    lines.append("### In-process: one process alternating uninstall() / install() between paired samples")
    lines.append("")
    lines.append(
        "| workload | mode | CPU µs/op | Δ CPU µs/op [min-max] | CPU ratio [min-max] | "
        "wall ratio [min-max] | rounds x ops per round |"
    )
    lines.append("| --- | --- | --- | --- | --- | --- | --- |")
    for workload, by_mode in results["inprocess"].items():
        for mode, s in by_mode.items():
            if mode == "baseline":
                lines.append(
                    f"| {workload} | baseline | {s['cpu_us']['median']:.1f} | | | | "
                    f"{s['rounds']} x {s['n']} |"
                )
            else:
                lines.append(
                    f"| {workload} | {mode} | {s['cpu_us']['median']:.1f} | "
                    f"{_range(s['cpu_delta_us'], '{:+.1f}')} | {_range(s['cpu_ratio'])} | "
                    f"{_range(s['wall_ratio'])} | {s['rounds']} x {s['n']} |"
                )
    lines.append("")
    lines.append("### Cross-process: one long-lived process per contender, interleaved round by round")
    lines.append("")
    lines.append(
        "| workload | contender | CPU µs/op | wall µs/op | CPU ratio [min-max] | wall ratio [min-max] | "
        "Δ CPU µs/op | activity/op |"
    )
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
    units = results.get("units", {})
    for workload, by_name in results["cross"].items():
        for name, s in by_name.items():
            ratio = _range(s["cpu_ratio"]) if "cpu_ratio" in s else ""
            wall_ratio = _range(s["wall_ratio"]) if "wall_ratio" in s else ""
            delta = f"{s['cpu_delta_us']['median']:+.1f}" if "cpu_delta_us" in s else ""
            unit = units.get(name)
            act = f"{s['activity_per_op']:.2f} {unit}" if unit else "-"
            lines.append(
                f"| {workload} | {name} | {s['cpu_us']['median']:.1f} | {s['wall_us']['median']:.1f} | "
                f"{ratio} | {wall_ratio} | {delta} | {act} |"
            )
    if results.get("mem"):
        lines.append("")
        lines.append("### Memory: SQLite connect/close cycles after a warm-up")
        lines.append("")
        lines.append("| contender | warm-up | cycles | RSS before | RSS growth | records kept |")
        lines.append("| --- | --- | --- | --- | --- | --- |")
        for name, m in results["mem"].items():
            kept = m.get("history_records", "-")
            lines.append(
                f"| {name} | {m['warmup']:,} | {m['cycles']:,} | {m['rss_before'] / 2**20:.1f} MiB | "
                f"{(m['rss_after'] - m['rss_before']) / 1024:+.0f} KiB | {kept} |"
            )
    return "\n".join(lines) + "\n"
