"""``conntrace report`` reads whatever a deployment's logs hold, and keeps hosts and processes apart.

The events are real: one run of ``tests/e2e/forkscenario.py`` (a parent forks an
``os.fork`` and a ``multiprocessing`` child sharing its session under
FORK_POLICY "warn"; the first child's close ends it for all), one log file per
process. Around them: other programs' lines, garbage, empty and binary files,
gzip (told by its magic bytes), a gzip cut short, stdin, a second host with the
same pids and a clock two hours behind, a pid used again.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from benchmarks.log_report import replay
from conntrace.report import cli, html, reading, text
from conntrace.report.findings import iso
from tests.support import REPO, run_module

pytestmark = [pytest.mark.postgres]

SKEW_S = 2 * 3600


class Logs:
    """One real run's log directory, its events and what the scenario said (the children's pids)."""

    def __init__(self, directory: Path, result: dict[str, Any]) -> None:
        self.directory = directory
        self.files = sorted(directory.glob("events-*.jsonl"))
        self.events = [json.loads(line) for path in self.files for line in path.read_text().splitlines()]
        self.parent_pid = next(e["pid"] for e in self.events if e["event"] == "connection_open_at_fork")
        self.child_pids = {child["pid"] for child in result["children"]}
        self.killer_pid = next(c["pid"] for c in result["children"] if c["how"] == "os.fork")


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Logs]:
    """Give the logs of one fork scenario run, one file per process."""
    directory = tmp_path_factory.mktemp("logs")
    results = tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONNTRACE_E2E_LOG_DIR", str(directory))
        done = run_module("tests.e2e.forkscenario", "default", "warn", str(results), "close")
    assert done.returncode == 0, done.stderr
    yield Logs(directory, json.loads(done.stdout))


def write_lines(path: Path, events: list[dict[str, Any]], **changes: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({**event, **changes}) + "\n" for event in events))
    return path


def read(*paths: Path | str, **options: Any) -> dict[str, Any]:
    return cli.read([str(path) for path in paths], **options)


def pids(findings: dict[str, Any], numbers: list[int]) -> set[int]:
    return {findings["processes"][n]["pid"] for n in numbers}


def test_the_run_reads_as_one_problem_its_fork_tree_and_the_child_that_killed_the_session(logs):
    found = read(logs.directory)
    [problem] = found["problems"]
    assert problem["level"] == "error"
    assert problem["kinds"]["connection_fork_inherited"] == 2
    assert problem["kinds"]["connection_lost:forked_sibling"] == 1
    assert pids(found, problem["processes"]) == {logs.parent_pid, *logs.child_pids}
    [parent] = [p for p in found["processes"] if p["parent"] is None]
    assert (parent["pid"], pids(found, parent["children"])) == (logs.parent_pid, logs.child_pids)
    assert list(problem["killed_by"]) == [f"{parent['host']} pid {logs.killer_pid}"]
    assert found["input"] == {
        "files": len(logs.files),
        "lines": len(logs.events),
        "events": len(logs.events),
        "other_lines": 0,
        "corrupt_lines": 0,
        "damaged": [],
        "outside_since_until": 0,
    }


def test_other_programs_lines_garbage_empty_and_binary_files_are_skipped_and_counted(logs, tmp_path):
    mixed = tmp_path / "mixed.log"
    lines = [json.dumps(event) for event in logs.events]
    noise = [
        "[2026-11-28 10:21:45 +0000] [4242] [INFO] Booting worker with pid: 4243",
        '{"event": "request_finished", "code": 200}',  # JSON, not conntrace's
        '{"event": "connection_opened", "alias": "default", "pid": 1',  # conntrace's, cut short
        'not json at all but mentions "connection_lost"',
    ]
    prefixed = "2026-11-28T10:21:45Z app[web.1]: " + lines[0]  # a shipper's prefix before the JSON
    mixed.write_text("\n".join([*noise[:2], *lines[1:], *noise[2:], prefixed]) + "\n")
    (tmp_path / "empty.log").write_text("")
    (tmp_path / "binary.bin").write_bytes(bytes(range(256)) * 40 + b'\x00"connection_\xff\xfe\n' * 3)
    (tmp_path / "garbage.txt").write_text("}{][\n" * 50 + "\ufffd\x00\n")
    (tmp_path / "gone.log").symlink_to(tmp_path / "rotated-away.log")  # a dangling link
    os.mkfifo(tmp_path / "pipe")  # never opened: it would block

    found = read(tmp_path)
    assert found["problems"] == read(logs.directory)["problems"]
    assert found["input"]["files"] == 4
    assert found["input"]["events"] == len(logs.events)
    assert found["input"]["corrupt_lines"] == 2 + 3  # the cut event, the prose line; the binary lines
    assert found["input"]["damaged"] == [
        f"{tmp_path / 'gone.log'}: cannot read (No such file or directory); left out"
    ]


def test_rotated_files_are_read_oldest_first_so_a_process_is_not_cut_in_three(logs, tmp_path):
    """logrotate's web.log.2.gz, web.log.1, web.log: name order would read the newest first."""
    lines = list(replay(logs.events, 9000, 3, 40))
    thirds = [lines[:3000], lines[3000:6000], lines[6000:]]
    whole = write_lines(tmp_path / "whole" / "web.log", [])
    whole.write_text("".join(f"{line}\n" for line in lines))
    rotated = tmp_path / "rotated"
    rotated.mkdir()
    (rotated / "web.log.2.gz").write_bytes(gzip.compress("".join(f"{x}\n" for x in thirds[0]).encode()))
    (rotated / "web.log.1").write_text("".join(f"{x}\n" for x in thirds[1]))
    (rotated / "web.log").write_text("".join(f"{x}\n" for x in thirds[2]))
    one_file, three_files = read(whole), read(rotated)
    assert len(three_files["processes"]) == len(one_file["processes"]) == 3
    assert three_files["problems"] == one_file["problems"]
    order = [Path(file).name for file, _ in reading.expand([str(rotated)])]
    assert order == ["web.log.2.gz", "web.log.1", "web.log"]
    as_a_shell_globs = sorted(str(path) for path in rotated.iterdir())  # web.log* : web.log first
    assert read(*as_a_shell_globs)["processes"] == three_files["processes"]
    dated = ["app.log", "app.log-20261127.gz", "app.log-20261126", "other.log"]
    assert sorted(dated, key=reading.oldest_first) == [
        "app.log-20261126", "app.log-20261127.gz", "app.log", "other.log"
    ]  # fmt: skip


def test_gzip_is_told_by_its_magic_and_a_truncated_gzip_gives_the_lines_before_the_damage(logs, tmp_path):
    whole = "".join(f"{line}\n" for line in replay(logs.events, 4000, 10, 50)).encode()
    (tmp_path / "a.log").write_bytes(gzip.compress(whole))  # no .gz in the name
    cut = gzip.compress(whole)
    (tmp_path / "b.log").write_bytes(cut[: len(cut) * 2 // 3])
    write_lines(tmp_path / "c.jsonl", logs.events)  # read after the damaged file: the run goes on

    (tmp_path / "plain" / "a.log").parent.mkdir()
    (tmp_path / "plain" / "a.log").write_bytes(whole)
    complete = read(tmp_path / "plain" / "a.log")["input"]["events"]
    assert read(tmp_path / "a.log")["input"]["events"] == complete > 2000
    (tmp_path / "plain" / "a.log").unlink()
    found = read(tmp_path)
    [damage] = found["input"]["damaged"]
    assert damage.startswith(f"{tmp_path / 'b.log'}: damaged after line ")
    assert "\n" not in damage
    assert complete + len(logs.events) < found["input"]["events"] < 2 * complete + len(logs.events)


def test_stdin_reads_as_a_file_does(logs):
    data = "".join(path.read_text() for path in logs.files)
    done = subprocess.run(
        [sys.executable, "-m", "conntrace", "report", "--json", "-"],
        input=data, capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert json.loads(done.stdout)["problems"][0]["kinds"] == read(logs.directory)["problems"][0]["kinds"]


def test_a_path_that_does_not_exist_is_exit_status_2_with_one_line(logs, tmp_path):
    missing = tmp_path / "nowhere.log"
    done = run_module("conntrace", "report", str(logs.directory), str(missing))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"conntrace report: no such file or directory: {missing}\n"
    err = io.StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command("conntrace_report", str(missing), stdout=io.StringIO(), stderr=err)
    assert exited.value.code == 2
    assert f"no such file or directory: {missing}" in err.getvalue()


def test_two_hosts_with_the_same_pids_and_skewed_clocks_are_kept_apart(logs, tmp_path):
    behind = []
    for event in logs.events:
        moment = cli.moment(event["timestamp"]) - SKEW_S
        behind.append({**event, "host": "web-2", "timestamp": f"{cli_iso(moment)}"})
    write_lines(tmp_path / "web-1.jsonl", logs.events, host="web-1")
    write_lines(tmp_path / "web-2.jsonl", behind)

    found = read(tmp_path)
    assert len(found["processes"]) == 2 * (1 + len(logs.child_pids))
    [problem] = found["problems"]
    assert problem["hosts"] == ["web-1", "web-2"]
    assert problem["count"] == 2 * read(logs.directory)["problems"][0]["count"]
    assert problem["killed_by"] == {f"web-1 pid {logs.killer_pid}": 1, f"web-2 pid {logs.killer_pid}": 1}
    roots = [p for p in found["processes"] if p["parent"] is None]
    assert sorted(root["host"] for root in roots) == ["web-1", "web-2"]
    for root in roots:
        children = [found["processes"][n] for n in root["children"]]
        assert {child["host"] for child in children} == {root["host"]}
        assert {child["pid"] for child in children} == logs.child_pids
    assert {life["opened_by"] for life in found["lives"]} == {root["id"] for root in roots}
    page = html.render(found)  # each host on its own clock, two hours apart
    assert page.count("(this host's clock)") == 2
    assert f"web-1: {iso(roots[0]['first_ts'])}" in page or f"web-1: {iso(roots[1]['first_ts'])}" in page


def cli_iso(moment: float) -> str:
    return iso(moment) or ""


def test_without_a_host_field_each_directory_is_kept_apart(logs, tmp_path):
    hostless = [{k: v for k, v in event.items() if k != "host"} for event in logs.events]
    for where in ("a", "b"):
        for pid in {event["pid"] for event in hostless}:
            # The parent's file last: its children's events name it before its own are read.
            name = "zz-parent.jsonl" if pid == logs.parent_pid else f"events-{pid}.jsonl"
            write_lines(tmp_path / where / name, [e for e in hostless if e["pid"] == pid])
    found = read(tmp_path)
    roots = [p for p in found["processes"] if p["parent"] is None]
    assert len(roots) == 2
    for root in roots:
        directory = os.path.dirname(root["source"])
        assert {os.path.dirname(found["processes"][n]["source"]) for n in root["children"]} == {directory}
        assert pids(found, root["children"]) == logs.child_pids
        assert os.path.basename(root["source"]) == "zz-parent.jsonl"
    assert len(found["processes"]) == 2 * (1 + len(logs.child_pids))
    assert list(found["problems"][0]["killed_by"]) == [
        f"events-{logs.killer_pid}.jsonl pid {logs.killer_pid}"
    ]


def test_without_the_connection_id_the_killer_is_found_by_backend_pid_in_the_same_family(logs, tmp_path):
    # The children's reports name another conn_id: only the server's backend pid ties their close to it.
    renamed = [{**e, "conn_id": 999} if e["event"] == "connection_fork_inherited" else e for e in logs.events]
    write_lines(tmp_path / "web-1.jsonl", renamed)
    [problem] = read(tmp_path)["problems"]
    assert list(problem["killed_by"]) == [f"{logs.events[0]['host']} pid {logs.killer_pid}"]
    # Another host's process with the same backend pid is not of the family.
    (tmp_path / "web-1.jsonl").unlink()
    write_lines(tmp_path / "a.jsonl", [e for e in renamed if e["pid"] != logs.killer_pid], host="web-1")
    write_lines(tmp_path / "b.jsonl", [e for e in renamed if e["pid"] == logs.killer_pid], host="web-2")
    [problem] = read(tmp_path)["problems"]
    assert problem["killed_by"] == {}


def test_a_pid_used_again_is_a_new_process(logs, tmp_path):
    parent = [e for e in logs.events if e["pid"] == logs.parent_pid]
    write_lines(tmp_path / "host.jsonl", parent + parent)  # the same pid, its seq back at 1
    found = read(tmp_path)
    assert [p["label"].split(" pid ")[1] for p in found["processes"]] == [
        str(logs.parent_pid),
        f"{logs.parent_pid} (start 2)",
    ]


def test_since_and_until_leave_events_out_and_nothing_left_is_exit_status_0(logs, capsys):
    last = max(cli.moment(event["timestamp"]) for event in logs.events)
    assert cli.run([str(logs.directory)], since=last + 1) == 0
    out = capsys.readouterr().out
    assert "No problems found." in out
    assert f"{len(logs.events)} outside --since/--until" in out
    assert read(logs.directory, until=last + 1)["problems"] == read(logs.directory)["problems"]


def test_input_without_a_single_conntrace_event_says_so_rather_than_all_is_well(tmp_path, capsys):
    (tmp_path / "app.log").write_text("[INFO] Booting worker with pid: 4243\n" + '{"event": "login"}\n')
    assert cli.run([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "No conntrace events in the input" in out and "No problems found." not in out


def test_the_summary_names_the_culprit_and_colours_only_a_terminal(logs, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    plain, terminal = io.StringIO(), Terminal()
    assert cli.run([str(logs.directory)], stdout=plain) == 1
    text.render(read(logs.directory), terminal)
    assert "\033[" not in plain.getvalue() and "\033[31;1mERROR" in terminal.getvalue()
    assert "1. ERROR  tests/e2e/forkscenario.py:" in plain.getvalue()
    assert "what to do: Remove the query" in plain.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    assert not text.wants_colour(terminal)


def test_the_management_command_prints_the_same_summary(logs):
    out = io.StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command("conntrace_report", str(logs.directory), stdout=out)
    assert exited.value.code == 1
    assert out.getvalue().startswith(f"conntrace report: {len(logs.files)} file(s)")


def test_at_100k_connections_the_page_draws_a_sample_and_says_so(logs, tmp_path):
    log = tmp_path / "big.jsonl"
    log.write_text("".join(f"{line}\n" for line in replay(logs.events, 320_000, 50, 1000)))
    page = tmp_path / "big.html"
    assert cli.run([str(log)], html_path=str(page), as_json=False, stdout=io.StringIO()) == 1
    found = read(log)
    assert found["totals"]["lives"] >= 100_000
    html = page.read_text()
    assert f"of {found['totals']['lives']} connection lives drawn" in html
    assert len(html) < 10_000_000
