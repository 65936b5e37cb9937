#!/usr/bin/env bash
# Run conntrace's whole test suite on a fresh machine.
#
# Installs what the tests need (PostgreSQL 15, pgbouncer, Chromium, Prometheus) when missing,
# creates a virtualenv in .venv with the project and its dev extras, then runs:
#   1. every test with psycopg 3 (plus SQLite),
#   2. the driver tests again with psycopg2 (psycopg 3 hidden from Django),
#   3. the structlog-facing tests again on the oldest structlog conntrace supports.
# The tests start their own PostgreSQL / pgbouncer / gunicorn / Chromium / Prometheus.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || need_apt+=(pgbouncer)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing system packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  # policy-rc.d keeps Debian from starting the system services: the tests run their own.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
echo "== installing conntrace with its dev extras"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[dev]"

echo "== lint"
lint_paths=$(ls -d conntrace tests benchmarks demo 2>/dev/null)
.venv/bin/ruff check $lint_paths
.venv/bin/ruff format --check $lint_paths

# tests/test_third_party_suite.py runs django-model-utils' own tests (from its sdist) under the
# pytest plugin: downloaded once into .venv.
third_party=.venv/third-party
[ -f "$third_party/django_model_utils-5.0.0.tar.gz" ] || .venv/bin/python -m pip download -q --no-deps \
  --no-binary :all: "django-model-utils==5.0.0" -d "$third_party"
export CONNTRACE_TEST_THIRD_PARTY="$(cd "$third_party" && pwd)"

status=0
echo "== tests (psycopg 3 and SQLite)"
.venv/bin/python -m pytest "$@" || status=$?
echo "== driver tests again with psycopg2"
CONNTRACE_TEST_DRIVER=psycopg2 .venv/bin/python -m pytest -m drivers "$@" || status=$?

# pyproject.toml says structlog>=24.1, and .venv has the newest: run what touches structlog
# (events, the request context, the level gate) on 24.1.0 too, put first on the path.
oldest_structlog=24.1.0
structlog_dir=".venv/structlog-$oldest_structlog"
echo "== structlog tests again with structlog $oldest_structlog"
[ -d "$structlog_dir/structlog" ] || .venv/bin/python -m pip install -q --no-deps --target "$structlog_dir" "structlog==$oldest_structlog"
PYTHONPATH="$structlog_dir" CONNTRACE_TEST_STRUCTLOG="$oldest_structlog" \
  CONNTRACE_TEST_STRUCTLOG_PATH="$(cd "$structlog_dir" && pwd)" \
  .venv/bin/python -m pytest tests/test_events.py tests/test_instrument.py tests/test_lifecycle.py "$@" || status=$?
exit $status
