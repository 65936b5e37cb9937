"""The Celery project's task in a raw ``multiprocessing`` child (fork start method), no Celery worker.

    python -m tests.e2e.celeryproj.rawfork TOKEN

Django starts as in the worker (the ``branding`` app reads the database while it
starts, and nothing closes that connection: Celery's worker fixup is not
installed outside a worker), then one forked child runs the task function itself
and the parent queries again. Prints one JSON line: both pids, the child's answer
and the parent's, read on its own session after the child ended.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from typing import Any


def main(token: str) -> dict[str, Any]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.e2e.celeryproj.settings")
    import django

    django.setup()
    from tests.e2e.celeryproj import tasks
    from tests.e2e.shop.models import Setting

    with multiprocessing.get_context("fork").Pool(1) as pool:
        child = pool.apply(tasks.write_and_read, (token,))
    return {
        "pid": os.getpid(),
        "child": child,
        "parent_after": Setting.objects.get(key="site_name").value,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
