"""The README's demo command, ``bash demo/run.sh``, in a fresh copy of the checkout, as a new user runs it.

The other demo tests run ``demo/run.sh`` with this environment's interpreter
(``DEMO_PYTHON``). This one copies what git tracks (and new files it does not
ignore) to a temporary directory and runs the command with nothing else: it
creates ``.venv-demo`` with ``python3``, installs conntrace and the toolbar from
the package index (pip's cache makes it quick when warm), migrates SQLite and
serves. The pages answer, and the import-time story is there by default.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.support import REPO, free_port, http_get, wait_listening

pytestmark = pytest.mark.slow

PAGES = ("/", "/normal/", "/double-close/", "/import-time/", "/close-fails/", "/thread-leak/", "/persistent/")


def fresh_copy(to: Path) -> Path:
    """Copy the checkout's files (tracked, or new and not ignored) to ``to``, as a clone would have them."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (to / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, to / name)
    return to


def test_the_readme_demo_command_serves_every_page_from_a_fresh_copy(tmp_path):
    checkout = fresh_copy(tmp_path / "conntrace")
    port = free_port()
    # A new user's shell: none of the test suite's variables, no virtualenv on the path.
    keep = ("HOME", "LANG", "LC_ALL", "TMPDIR", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CACHE_DIR")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    env.update(PATH="/usr/local/bin:/usr/bin:/bin", DEMO_PORT=str(port))
    log_path = tmp_path / "demo.log"
    with open(log_path, "w") as log:
        demo = subprocess.Popen(
            ["bash", "demo/run.sh"], cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_listening(port, demo, timeout=300, name="the demo", output=log_path.read_text)
        answers = {page: http_get(port, page, timeout=30) for page in PAGES}
    finally:
        try:
            os.killpg(demo.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        demo.wait(20)
    assert {page: status for page, (status, _) in answers.items()} == dict.fromkeys(PAGES, 200)
    _, import_time = answers["/import-time/"]
    assert "shop/featured.py:25 in _site_name" in import_time  # the import-time query, on by default
    assert "opened before the first request" in import_time
    assert (checkout / ".venv-demo" / "bin" / "python").exists()  # made by the command itself
