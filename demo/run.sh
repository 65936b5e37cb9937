#!/usr/bin/env bash
# Run the conntrace demo: a small Django site with the debug toolbar's Connections panel.
#
#   bash demo/run.sh            then open http://127.0.0.1:8000/
#
# Creates (or reuses) the virtualenv .venv-demo, installs conntrace with the toolbar
# (pip install -e ".[toolbar]"), migrates, and serves the demo on 127.0.0.1:8000.
# SQLite by default (demo/db.sqlite3); PostgreSQL when DATABASE_URL is set
# (postgres://user:password@host:port/name). Needs Python 3.11+ and the network for pip.
#
# Environment: PYTHON (interpreter for the virtualenv, default python3), DEMO_PORT (8000),
# DEMO_IMPORT_TIME_QUERY=0 (switch off the import-time query), DEMO_PYTHON (use this interpreter
# as it is, without creating .venv-demo: for the tests), DEMO_SETUP_ONLY=1 (stop after migrating).
# Extra arguments go to runserver.
set -euo pipefail
cd "$(dirname "$0")/.."

absolute() { local found; found="$(command -v "$1")" && echo "$(cd "$(dirname "$found")" && pwd)/$(basename "$found")"; }

if [ -n "${DEMO_PYTHON:-}" ]; then
  py="$(absolute "$DEMO_PYTHON")"
else
  base="${PYTHON:-python3}"
  if ! "$base" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "conntrace demo: needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
    exit 1
  fi
  if [ ! -x .venv-demo/bin/python ]; then
    echo "== creating the virtualenv .venv-demo"
    if ! "$base" -m venv .venv-demo; then
      rm -rf .venv-demo
      echo "conntrace demo: could not create a virtualenv (on Debian/Ubuntu: apt-get install python3-venv)" >&2
      exit 1
    fi
  fi
  py="$PWD/.venv-demo/bin/python"
  extras="toolbar"
  [ -n "${DATABASE_URL:-}" ] && extras="toolbar,psycopg"
  stamp=".venv-demo/.conntrace-demo-$extras"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "== installing conntrace with the debug toolbar (pip install -e \".[$extras]\")"
    "$py" -m pip install -q --upgrade pip
    "$py" -m pip install -q -e ".[$extras]"
    touch "$stamp"
  fi
fi

cd demo
export PYTHONUNBUFFERED=1
echo "== database: $(DJANGO_SETTINGS_MODULE=demosite.settings "$py" -c '
import django; django.setup()
from django.conf import settings
from demosite.dburl import describe
print(describe(settings.DATABASES["default"]))')"
echo "== migrating"
"$py" manage.py migrate --no-input -v0
if [ -n "${DEMO_SETUP_ONLY:-}" ]; then
  exit 0
fi
port="${DEMO_PORT:-8000}"
echo "== serving the demo on http://127.0.0.1:$port/ (Ctrl-C to stop)"
echo "   open a page, then the Connections panel of the debug toolbar on the right"
# --nothreading: one thread serves every request, so that the persistent connection of the
# "persistent" page is really reused (the threaded runserver closes connections after each request).
exec "$py" manage.py runserver "127.0.0.1:$port" --nothreading "$@"
