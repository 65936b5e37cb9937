#!/usr/bin/env bash
# The demo under gunicorn --preload with several workers and the import-time query switched on:
# conntrace's structlog JSON events show the connection that crosses fork() and where it came from.
#
#   bash demo/run-gunicorn.sh           starts gunicorn, sends a few requests, prints the events, stops
#   bash demo/run-gunicorn.sh --serve   keeps serving on http://127.0.0.1:8001/ until Ctrl-C
#
# What to look for (one JSON object per line on stdout):
#   connection_open_at_fork   (warning, in the master, once per worker forked) with opened_in
#                             pointing at shop/featured.py: the query at import time;
#   connection_fork_inherited (error, in each worker, at its first request) with the master's pid
#                             as opened_by_pid; the fork policy "reset" discarded the worker's copy.
# Same set-up as run.sh (.venv-demo, or DEMO_PYTHON), plus gunicorn. DEMO_PORT (8001), DEMO_WORKERS (3).
set -euo pipefail
cd "$(dirname "$0")/.."

export DEMO_IMPORT_TIME_QUERY=1 DEMO_LOG_FORMAT=json DEMO_TOOLBAR_STORE=db
export DEMO_LOG_LEVEL="${DEMO_LOG_LEVEL:-info}"
DEMO_SETUP_ONLY=1 bash demo/run.sh
found="$(command -v "${DEMO_PYTHON:-.venv-demo/bin/python}")"
py="$(cd "$(dirname "$found")" && pwd)/$(basename "$found")"
if ! "$py" -c 'import gunicorn' 2>/dev/null; then
  echo "== installing gunicorn"
  "$py" -m pip install -q gunicorn
fi
port="${DEMO_PORT:-8001}"
cd demo
gunicorn=("$py" -m gunicorn demosite.wsgi --preload --workers "${DEMO_WORKERS:-3}" --bind "127.0.0.1:$port"
  --graceful-timeout 5 --log-level warning)

if [ "${1:-}" = "--serve" ]; then
  echo "== serving under gunicorn --preload on http://127.0.0.1:$port/ (Ctrl-C to stop)"
  exec "${gunicorn[@]}"
fi

events="$(mktemp)"
server=""
trap 'rm -f "$events"; [ -n "$server" ] && kill -TERM "$server" 2>/dev/null; true' EXIT
echo "== starting gunicorn --preload with ${DEMO_WORKERS:-3} workers; conntrace's events follow"
"${gunicorn[@]}" > >(tee "$events") &
server=$!
"$py" - "$port" <<'PY'
import socket, sys, time, urllib.request

port = int(sys.argv[1])
deadline = time.monotonic() + 30
while True:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("gunicorn did not start")
        time.sleep(0.2)
for path in ["/normal/"] * 4 + ["/persistent/"] * 3 + ["/import-time/"]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=20) as response:
        print(f"== GET {path} -> {response.status}", file=sys.stderr)
PY
sleep 0.5
kill -TERM "$server"
wait "$server" || true
server=""
sleep 0.2
echo "== summary"
"$py" - "$events" <<'PY'
import collections, json, sys

seen = collections.Counter()
forks = []
for line in open(sys.argv[1]):
    try:
        event = json.loads(line)
    except ValueError:
        continue
    seen[event.get("event")] += 1
    if event.get("event") in ("connection_open_at_fork", "connection_fork_inherited"):
        forks.append(event)
for name, count in sorted(seen.items()):
    print(f"   {count:3d} x {name}")
for event in forks[:1] + [e for e in forks if e["event"] == "connection_fork_inherited"][:1]:
    print(f"   {event['event']}: pid {event['pid']}, connection opened by pid {event['opened_by_pid']} "
          f"in {event['opened_in']}")
PY
