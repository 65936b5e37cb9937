"""The benchmark orchestrator: ``python -m benchmarks [--quick]``.

Starts its own PostgreSQL (``tests/pgserver.py``; reused when the test
environment variables already point at one), creates a database of its own,
and runs three phases, each in worker processes (``benchmarks/worker.py``):

1. in-process: one process alternates ``conntrace.uninstall()`` /
   ``install()`` between paired samples (baseline, quiet, JSON), the most
   precise comparison on a noisy machine;
2. cross-process: one long-lived process per contender, interleaved round by
   round (A B C, C A B, ...: a random order each round), with a do-nothing
   contender whose ratio is the noise floor;
3. memory: SQLite connect/close cycles, RSS growth after a warm-up.

Prints Markdown tables and writes every number to a JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any, TextIO

from benchmarks import contenders, report, workloads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Operations per sample (one slice of a round) in the full run: a few ms of client CPU each.
SIZES = {"W1": 20, "W2": 1000, "W2c": 700, "W3a": 10, "W3b": 50, "W3t": 10}
MODES = ("baseline", "quiet", "json")
FULL = {
    "inprocess_rounds": 84,
    "cross_rounds": 36,
    "slices": 1,
    "scale": 1.0,
    "mem_cycles": 100_000,
    "mem_warmup": 5_000,
}
QUICK = {
    "inprocess_rounds": 8,
    "cross_rounds": 6,
    "slices": 1,
    "scale": 0.5,
    "mem_cycles": 30_000,
    "mem_warmup": 3_000,
}
MEM_CONTENDERS = ("baseline", "conntrace-quiet", "conntrace-json")
# Per-query workloads whose calls into conntrace are also counted (deterministic, see report.py).
COUNTED = ("W2", "W2c")
COUNTED_OPS = 200
PACKAGES = (
    "Django",
    "psycopg2-binary",
    "structlog",
    "sentry-sdk",
    "opentelemetry-sdk",
    "opentelemetry-instrumentation-psycopg2",
    "django-debug-toolbar",
)


class WorkerProcess:
    """A worker subprocess and its JSON-lines channel."""

    def __init__(self, contender: str, env: dict[str, str], log: TextIO) -> None:
        self.contender = contender
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.worker", contender],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        self.ready: dict[str, Any] | None = None
        self.log_name = getattr(log, "name", "?")

    def receive(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(
                f"worker {self.contender} exited (code {self.proc.wait()}); see {self.log_name}"
            )
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"worker {self.contender} failed:\n{answer['error']}")
        return answer

    def ask(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self.receive()

    def wait_ready(self) -> dict[str, Any]:
        if self.ready is None:
            self.ready = self.receive()
        return self.ready

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask(cmd="quit")
            except Exception:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def sizes(scale: float, selected: tuple[str, ...]) -> dict[str, int]:
    return {w: max(2, int(SIZES[w] * scale)) for w in selected}


def shuffled(names: list[str], rng: random.Random) -> list[str]:
    """Return ``names`` in a new random order: no contender always runs after the same one."""
    return rng.sample(names, len(names))


def _add(total: dict[str, Any] | None, sample: dict[str, Any], n: int) -> dict[str, Any]:
    """Sum one slice into a round's total for one contender."""
    if total is None:
        return {**sample, "n": n}
    return {
        "cpu_ns": total["cpu_ns"] + sample["cpu_ns"],
        "wall_ns": total["wall_ns"] + sample["wall_ns"],
        "activity": total["activity"] + sample["activity"],
        "events": total["events"] + sample["events"],
        "instrumented": total["instrumented"] and sample["instrumented"],
        "n": total["n"] + n,
    }


def interleave(names: list[str], rounds: int, slices: int, take: Any) -> dict[str, list[dict[str, Any]]]:
    """Run ``rounds`` rounds; in each, every contender takes ``slices`` samples, interleaved.

    Each pass runs every contender once, in a fresh random order (seeded, so a run
    can be repeated), so that drift on a noisy machine, the position in a round
    and the contender that ran just before all cancel out; a round's total per
    contender is compared with the baseline's total of the same round.
    """
    rng = random.Random(5)
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for r in range(rounds):
        totals: dict[str, dict[str, Any] | None] = dict.fromkeys(names)
        for k in range(slices):
            for name in shuffled(names, rng):
                totals[name] = _add(totals[name], *take(name, r, k))
        for name in names:
            samples[name].append(totals[name])
    return samples


def run_phase(
    names: list[str],
    ops: dict[str, int],
    rounds: int,
    slices: int,
    sample: Callable[[str, str, int, bool], dict[str, Any]],
    summary: Callable[[str, dict[str, Any]], str],
    say: Any,
) -> dict[str, Any]:
    """Interleave ``names`` on each workload, compare each with the baseline and ``say`` a summary.

    ``sample(name, workload, n, first)`` takes one slice of ``n`` operations; ``first`` is true in
    the first round's first slice, each name's first sample of that workload.
    """
    out = {}
    for workload, n in ops.items():

        def take(
            name: str, r: int, k: int, workload: str = workload, n: int = n
        ) -> tuple[dict[str, Any], int]:
            return sample(name, workload, n, r == 0 and k == 0), n

        out[workload] = report.compare(interleave(names, rounds, slices, take), "baseline")
        say(summary(workload, out[workload]))
    return out


def run_inprocess(
    worker: WorkerProcess, ops: dict[str, int], rounds: int, slices: int, say: Any
) -> dict[str, Any]:
    def sample(mode: str, workload: str, n: int, first: bool) -> dict[str, Any]:
        # One process switches modes between slices: every slice warms its mode up again.
        return worker.ask(cmd="sample", workload=workload, n=n, mode=mode, warmup=max(1, n // 10))

    def summary(workload: str, ratios: dict[str, Any]) -> str:
        return (
            f"  in-process {workload}: quiet {ratios['quiet']['cpu_ratio']['median']:.3f}, "
            f"json {ratios['json']['cpu_ratio']['median']:.3f}"
        )

    return run_phase(list(MODES), ops, rounds, slices, sample, summary, say)


def run_cross(
    workers: dict[str, WorkerProcess], ops: dict[str, int], rounds: int, slices: int, say: Any
) -> dict[str, Any]:
    def sample(name: str, workload: str, n: int, first: bool) -> dict[str, Any]:
        # A process per contender stays warm: only its first slice of a workload warms up.
        return workers[name].ask(cmd="sample", workload=workload, n=n, warmup=n if first else 0)

    def summary(workload: str, ratios: dict[str, Any]) -> str:
        return f"  cross-process {workload}: " + ", ".join(
            f"{k} {v['cpu_ratio']['median']:.2f}" for k, v in ratios.items() if "cpu_ratio" in v
        )

    return run_phase(list(workers), ops, rounds, slices, sample, summary, say)


def environment(server: Any) -> dict[str, Any]:
    """Describe the machine and the versions measured."""
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        pg = server.psql("SHOW server_version").strip().split()[0]
    except Exception:
        pg = "?"
    return {
        "cpu": f"{cpu} ({os.cpu_count()} CPUs)",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": f"{pg} (unix socket, trust auth)",
        "packages": packages,
    }


def active_problems(results: dict[str, Any]) -> list[str]:
    """Return every contender that did not do what it should (inactive, or a baseline instrumented)."""
    problems = []
    for workload, by_name in results["cross"].items():
        for name, s in by_name.items():
            baseline_like = name in ("baseline", "do-nothing")
            if s["instrumented"] == baseline_like:
                problems.append(f"{workload}/{name}: instrumented={s['instrumented']}")
    for name in results["contenders"]:
        if name in ("baseline", "do-nothing"):
            continue
        # The toolbar acts on requests only; every other contender on each connect.
        workload = "W3a" if name == "toolbar" else "W1"
        summary = results["cross"].get(workload, {}).get(name)
        if summary is not None and summary["activity_per_op"] <= 0:
            problems.append(f"{workload}/{name}: recorded nothing")
    w1 = results["cross"].get("W1", {})
    if "conntrace-json" in w1 and w1["conntrace-json"]["events_per_op"] < 2:
        problems.append("W1/conntrace-json: fewer than 2 events rendered per connect/close")
    if "conntrace-quiet" in w1 and w1["conntrace-quiet"]["events_per_op"] != 0:
        problems.append("W1/conntrace-quiet: events rendered although their level is dropped")
    for workload, by_mode in results["inprocess"].items():
        for mode, s in by_mode.items():
            if s["instrumented"] != (mode != "baseline"):
                problems.append(f"in-process {workload}/{mode}: instrumented={s['instrumented']}")
    return problems


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few rounds, small samples (about a minute)")
    parser.add_argument("--workloads", default=",".join(workloads.WORKLOADS), help="comma-separated subset")
    parser.add_argument(
        "--contenders", default=",".join(contenders.CONTENDERS), help="comma-separated subset"
    )
    parser.add_argument("--inprocess-rounds", type=int, help="paired rounds in the in-process phase")
    parser.add_argument("--cross-rounds", type=int, help="rounds in the cross-process phase")
    parser.add_argument("--slices", type=int, help="interleaved samples per contender in a round")
    parser.add_argument("--scale", type=float, help="multiply the operations per sample")
    parser.add_argument("--mem-cycles", type=int, help="SQLite connect/close cycles measured (0: skip)")
    parser.add_argument(
        "--json",
        default=os.path.join(ROOT, "benchmarks", "results", "latest.json"),
        help="where to write every number",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    plan = dict(QUICK if args.quick else FULL)
    for key in ("inprocess_rounds", "cross_rounds", "slices", "scale", "mem_cycles"):
        if getattr(args, key) is not None:
            plan[key] = getattr(args, key)
    selected = tuple(w for w in args.workloads.split(",") if w)
    unknown = set(selected) - set(workloads.WORKLOADS)
    if unknown:
        raise SystemExit(f"unknown workloads: {sorted(unknown)}")
    wanted = [c for c in args.contenders.split(",") if c]
    for required in ("baseline", "do-nothing"):
        if required not in wanted:
            wanted.insert(0, required)
    names = [c for c in contenders.CONTENDERS if c in wanted and contenders.available(c)]
    skipped = [c for c in wanted if c not in names]
    ops = sizes(plan["scale"], selected)
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:5.1f}s] {text}", file=sys.stderr, flush=True)

    sys.path.insert(0, ROOT)
    from tests import pgserver

    say("starting PostgreSQL" if not os.environ.get(pgserver.ENV_HOST) else "reusing PostgreSQL")
    pgserver.ensure()
    server = pgserver.server()
    database = f"conntrace_bench_{os.getpid()}"
    server.psql(f"CREATE DATABASE {database}")
    env = {
        **os.environ,
        "CONNTRACE_BENCH_DB": database,
        "DJANGO_SETTINGS_MODULE": "benchmarks.settings",
        "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p),
    }
    log = tempfile.NamedTemporaryFile("w+", prefix="conntrace-bench-", suffix=".log", delete=False)  # noqa: SIM115
    workers: dict[str, WorkerProcess] = {}
    inproc: WorkerProcess | None = None
    try:
        say(
            f"workers: inprocess, {', '.join(names)}"
            + (f" (not installed: {', '.join(skipped)})" if skipped else "")
        )
        inproc = WorkerProcess("inprocess", env, log)
        inproc.wait_ready()  # the first worker creates the table
        workers = {name: WorkerProcess(name, env, log) for name in names}
        for worker in workers.values():
            worker.wait_ready()
        rounds, slices = plan["inprocess_rounds"], plan["slices"]
        say(f"in-process phase: {rounds} rounds x {slices} slices, ops per slice {ops}")
        inprocess = run_inprocess(inproc, ops, plan["inprocess_rounds"], plan["slices"], say)
        calls = {w: inproc.ask(cmd="count", workload=w, n=COUNTED_OPS) for w in selected if w in COUNTED}
        for workload, counted in calls.items():
            say(f"  calls into conntrace per {workload} operation (counted): {counted['calls_per_op']:g}")
        inproc.close()
        say(f"cross-process phase: {plan['cross_rounds']} rounds x {plan['slices']} slices")
        cross = run_cross(workers, ops, plan["cross_rounds"], plan["slices"], say)
        mem = {}
        if plan["mem_cycles"]:
            say(f"memory phase: {plan['mem_cycles']:,} SQLite connect/close cycles")
            for name in MEM_CONTENDERS:
                if name in workers:
                    mem[name] = workers[name].ask(
                        cmd="mem", cycles=plan["mem_cycles"], warmup=plan["mem_warmup"]
                    )
        results: dict[str, Any] = {
            "quick": args.quick,
            "plan": {**plan, "ops": ops},
            "environment": environment(server),
            "contenders": {name: contenders.DESCRIPTIONS[name] for name in names},
            "not_installed": skipped,
            "units": contenders.UNITS,
            "workloads": {w: workloads.DESCRIPTIONS[w] for w in selected},
            "inprocess": inprocess,
            "calls": calls,
            "cross": cross,
            "mem": mem,
        }
        results["verdicts"] = report.verdicts(inprocess, cross, mem, calls)
        results["problems"] = active_problems(results)
    finally:
        for worker in [*workers.values(), *([inproc] if inproc else [])]:
            worker.close()
        try:
            server.psql(f"DROP DATABASE IF EXISTS {database}")
        except Exception:
            pass
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as out:
        json.dump(results, out, indent=1)
    print(report.markdown(results))
    for problem in results["problems"]:
        print(f"PROBLEM: {problem}")
    log.close()
    if results["problems"]:
        say(f"done, with problems; numbers in {args.json}; worker log {log.name}")
        return 1
    os.remove(log.name)
    say(f"done; numbers in {args.json}")
    return 0
