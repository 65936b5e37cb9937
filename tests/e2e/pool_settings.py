"""The end-to-end project with a psycopg pool (Django 5.1+ ``OPTIONS={"pool": ...}``)."""

from tests.e2e.settings import *  # noqa: F403

DATABASES = {
    "default": {
        **DATABASES["default"],  # noqa: F405
        "CONN_MAX_AGE": 0,  # required with a pool
        "OPTIONS": {"pool": {"min_size": 1, "max_size": 2}},
    }
}
