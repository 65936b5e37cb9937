"""The panel's template is found from a built wheel and from an editable install, each in a fresh virtualenv.

The template lives in the checkout's top-level ``templates/``. The wheel carries
it as ``conntrace/templates`` (``force-include``); an editable install leaves the
package in the checkout, beside ``templates/`` (and hatchling also drops a stale
copy of the forced files into site-packages, which must not be the one used).
Both installs run offline: ``--no-index``, ``--no-build-isolation``, and the
dependencies reached through a ``.pth`` line to this environment's site-packages,
which makes no other of its packages (nor its own ``conntrace``) importable first.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEPS = sysconfig.get_paths()["purelib"]

# Runs inside the fresh virtualenv: one real connection, observed and rendered by the panel's code.
CHECK = """\
import json
import django
from django.conf import settings

settings.configure(
    INSTALLED_APPS=["conntrace"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    USE_TZ=True,
)
django.setup()
import conntrace
from conntrace import panel_stats, panel_tracking, panels
from django.db import connection

session = panel_tracking.Session()
panel_tracking.start(session)
try:
    with connection.cursor() as cursor:  # the opening line
        cursor.execute("SELECT 1")
finally:
    panel_tracking.stop(session)
html = panels.render(panel_stats.build_stats(session))
print(json.dumps({"conntrace": conntrace.__file__, "template_dirs": panels.template_dirs(), "html": html}))
"""


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True, timeout=180)


def fresh_venv(where: Path) -> Path:
    """Create a virtualenv without pip whose only extra path is this environment's site-packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=60)
    python = where / "bin" / "python"
    site = subprocess.run(
        [str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    Path(site, "deps.pth").write_text(DEPS + "\n")
    return python


def run_check(python: Path, workdir: Path) -> dict[str, object]:
    script = workdir / "check_panel.py"
    script.write_text(CHECK)
    # -I: neither the working directory nor PYTHONPATH can put the checkout's conntrace first.
    out = subprocess.run(
        [str(python), "-I", str(script)], cwd=workdir, check=True, capture_output=True, text=True, timeout=60
    )
    return json.loads(out.stdout.splitlines()[-1])


def assert_rendered(result: dict[str, object]) -> None:
    html = str(result["html"])
    assert 'class="conntrace-panel"' in html
    assert "1 opened · 0 reused · 0 warnings" in html
    line = CHECK.splitlines().index("    with connection.cursor() as cursor:  # the opening line") + 1
    assert f"check_panel.py:{line} in &lt;module&gt;" in html


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(REPO))
    [built] = dist.glob("conntrace-*.whl")
    return built


@pytest.mark.slow
def test_wheel_carries_the_template_inside_the_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "conntrace/templates/conntrace/panel.html" in names
    assert "conntrace/panels.py" in names
    assert not [name for name in names if name.startswith("templates/")]


@pytest.mark.slow
def test_panel_renders_from_the_installed_wheel(wheel, tmp_path):
    python = fresh_venv(tmp_path / "venv")
    pip("--python", str(python), "install", "--no-deps", "--no-index", str(wheel))
    result = run_check(python, tmp_path)
    package = Path(str(result["conntrace"])).parent
    assert package.is_relative_to(tmp_path / "venv")
    assert result["template_dirs"] == [str(package / "templates")]
    assert_rendered(result)


@pytest.mark.slow
def test_panel_renders_from_an_editable_install(tmp_path):
    python = fresh_venv(tmp_path / "venv")
    pip(
        "--python", str(python), "install", "--no-deps", "--no-index", "--no-build-isolation", "-e", str(REPO)
    )
    result = run_check(python, tmp_path)
    assert result["conntrace"] == str(REPO / "conntrace" / "__init__.py")
    # The checkout's own templates/, not the copy hatchling left in site-packages.
    assert result["template_dirs"] == [str(REPO / "templates")]
    assert_rendered(result)
