"""Run alone, with ``SAMPLE_POOL=1``: a test that uses a pooled alias whose pool nobody closes."""

import pytest
from django.db import connections

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "pooled"])


def test_bad_pool_left_open():
    with connections["pooled"].cursor() as cursor:
        cursor.execute("SELECT 1")
    connections["pooled"].close()  # back to the pool, which keeps its sessions
