"""Run with ``SAMPLE_POOL=1``: a Django test that uses a pooled test-mirror alias whose pool nobody closes."""

from django.db import connections
from django.test import TransactionTestCase


class PoolTests(TransactionTestCase):
    databases = {"default", "pooled"}

    def test_bad_pool_left_open(self):
        with connections["pooled"].cursor() as cursor:
            cursor.execute("SELECT 1")
        connections["pooled"].close()  # back to the pool, which keeps its sessions
