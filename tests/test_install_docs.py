"""Every install instruction in the README and docs/ works as written; the demo's port is documented.

conntrace is not on the package index: each ``pip install`` line must install
from a checkout (``.``, ``-e .``, a path), and each extra it names (``".[toolbar]"``)
must be one ``pyproject.toml`` declares. One of them, the README's
``pip install ".[toolbar]"``, is run as written, offline, into a temporary target.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
EXTRAS = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
# "pip install" and its arguments, up to the end of the line, a closing backtick or parenthesis, or a comment.
PIP_INSTALL = re.compile(r"pip install ([^`)#\n]*)")
LOCAL_EXTRAS = re.compile(r"""["']?(?:\.|/[^\s\[]*)\[([^\]]*)\]""")


def install_lines() -> list[tuple[str, str]]:
    """Return (where, arguments) for every ``pip install`` in the README and docs/*.md."""
    found = []
    for document in DOCUMENTS:
        for number, line in enumerate(document.read_text().splitlines(), 1):
            for match in PIP_INSTALL.finditer(line):
                found.append((f"{document.relative_to(REPO)}:{number}", match.group(1).strip()))
    return found


def requirements(arguments: str) -> list[str]:
    """Return what a ``pip install`` installs: its arguments that are not options."""
    return [token for token in shlex.split(arguments) if not token.startswith("-")]


def is_local(requirement: str) -> bool:
    return requirement.startswith((".", "/"))


def test_the_documents_have_install_instructions():
    assert len(install_lines()) >= 5  # README's three, panel-and-demo, performance


@pytest.mark.parametrize(("where", "arguments"), install_lines())
def test_each_instruction_installs_from_the_checkout_with_extras_that_exist(where, arguments):
    wanted = requirements(arguments)
    assert wanted, f"{where}: pip install of nothing"
    for requirement in wanted:
        name = re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower()
        assert name != "conntrace", f"{where}: {requirement!r} is not on the package index: use '.'"
        if is_local(requirement):
            for extras in LOCAL_EXTRAS.findall(requirement):
                unknown = {extra.strip() for extra in extras.split(",")} - EXTRAS
                assert not unknown, f"{where}: no extra {sorted(unknown)} in pyproject.toml"


def test_every_extra_the_documents_quote_exists():
    """Also the ones named in prose or comments, such as the README's ``".[psycopg]"``."""
    quoted = {
        extra.strip()
        for document in DOCUMENTS
        for extras in re.findall(r"""["']\.\[([^\]]*)\]["']""", document.read_text())
        for extra in extras.split(",")
    }
    assert quoted >= {"toolbar", "postgres", "psycopg"}
    assert quoted <= EXTRAS


@pytest.mark.slow
def test_the_readme_toolbar_install_runs_as_written(tmp_path):
    [(where, arguments)] = [(w, a) for w, a in install_lines() if w.startswith("README") and "toolbar" in a]
    offline = ["--no-deps", "--no-build-isolation", "--no-index", "--target", str(tmp_path / "site")]
    command = [sys.executable, "-m", "pip", "install", "-q", *shlex.split(arguments), *offline]
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, f"{where}: {out.stderr}"
    assert "does not provide the extra" not in out.stderr
    assert (tmp_path / "site" / "conntrace" / "templates" / "conntrace" / "panel.html").exists()
    assert (tmp_path / "site" / "conntrace" / "live_signal.py").exists()


def test_the_readme_gives_the_demo_port_and_its_default_as_run_sh_has_them():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## The two commands") : readme.index("## Install and enable")]
    assert "http://127.0.0.1:8000/" in section
    assert "on port 8000 (`DEMO_PORT=8001 bash demo/run.sh` for another port" in " ".join(section.split())
    assert 'port="${DEMO_PORT:-8000}"' in (REPO / "demo" / "run.sh").read_text()
