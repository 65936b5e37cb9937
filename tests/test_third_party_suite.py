"""A real third-party suite, django-model-utils 5.0.0's tests from its sdist, on PostgreSQL in strict mode.

The suite is clean: with the plugin in strict mode it passes exactly as many
tests as without it. Both run times are printed (``-s`` shows them), never
asserted. ``scripts/test.sh`` downloads the sdist once into
``.venv/third-party`` (``CONNTRACE_TEST_THIRD_PARTY``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from tests import pgserver
from tests.test_pytest_plugin import inner_pytest, outer_env_removed

ROOT = Path(__file__).resolve().parent.parent
SDIST = "django_model_utils-5.0.0.tar.gz"
THIRD_PARTY = Path(os.environ.get("CONNTRACE_TEST_THIRD_PARTY", Path(sys.prefix) / "third-party"))


def run_suite(source: Path, mode: str) -> tuple[subprocess.CompletedProcess, float]:
    host, port = pgserver.ensure()
    env = outer_env_removed()
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        # The suite's settings read these; Django creates and drops test_<name>.
        POSTGRES_DB=f"modelutils_{uuid.uuid4().hex[:8]}",
        POSTGRES_USER=pgserver.APP_USER,
        POSTGRES_PASSWORD=pgserver.APP_PASSWORD,
        POSTGRES_HOST=host,
        POSTGRES_PORT=str(port),
    )
    started = time.monotonic()
    run = inner_pytest(source, env, "-q", f"--conntrace={mode}", timeout=300)
    return run, time.monotonic() - started


def passed(out: str) -> int:
    found = re.search(r"(\d+) passed", out)
    return int(found.group(1)) if found else 0


@pytest.mark.slow
def test_django_model_utils_passes_the_same_tests_in_strict_mode(tmp_path):
    with tarfile.open(THIRD_PARTY / SDIST) as sdist:
        sdist.extractall(tmp_path, filter="data")
    source = tmp_path / SDIST.removesuffix(".tar.gz")
    without, without_s = run_suite(source, "off")
    strict, strict_s = run_suite(source, "strict")
    print(f"django-model-utils 5.0.0: without the plugin {without_s:.1f} s, strict {strict_s:.1f} s")
    assert without.returncode == 0, without.stdout[-3000:]
    assert strict.returncode == 0, strict.stdout[-3000:]
    assert passed(strict.stdout) == passed(without.stdout) >= 350
    assert f"conntrace (strict): {passed(strict.stdout)} tests watched, no finding" in strict.stdout
    assert "conntrace" not in without.stdout.replace("plugins: conntrace", "")
