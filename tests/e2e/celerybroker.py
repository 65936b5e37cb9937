"""Where the Celery project keeps its messages and results: files, so that no broker server is needed.

Shared by the project's settings (``celeryproj/settings.py``, as ``CELERY_*``) and by the test
that sends it tasks from its own process (``tests/test_e2e_celery.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def config(directory: str | Path) -> dict[str, Any]:
    """Return Celery's settings (lower-case names): a filesystem broker and file results in ``directory``."""
    messages = Path(directory, "messages")
    processed = Path(directory, "processed")
    control = Path(directory, "control")  # exchanges; relative to the current directory by default
    results = Path(directory, "results")
    for folder in (messages, processed, control, results):
        folder.mkdir(parents=True, exist_ok=True)
    return {
        "broker_url": "filesystem://",
        "broker_transport_options": {
            "data_folder_in": str(messages),
            "data_folder_out": str(messages),
            "processed_folder": str(processed),
            "control_folder": str(control),
            "polling_interval": 0.05,
        },
        "result_backend": f"file://{results}",
    }
