"""Settings of the sample project the plugin's tests run (tests/test_pytest_plugin.py).

``SAMPLE_DB``: ``postgres`` (the test server, found through ``CONNTRACE_TEST_PGHOST`` /
``CONNTRACE_TEST_PGPORT``; ``SAMPLE_DRIVER=psycopg2`` hides psycopg 3 from Django) or ``sqlite``
(files in ``SAMPLE_DIR``). ``SAMPLE_TEST_DB``
names the test database, unique per run. The ``reference`` alias is the one
``sampleapp`` reads while Django starts; no test uses it, so no test database
replaces it and its session stays open for the whole run.
"""

import os
import sys

SECRET_KEY = "conntrace-plugin-sample"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
INSTALLED_APPS = ["django.contrib.contenttypes", "conntrace", "sampleapp"]

_dir = os.environ["SAMPLE_DIR"]
_test_name = os.environ["SAMPLE_TEST_DB"]
if os.environ.get("SAMPLE_DRIVER") == "psycopg2":
    sys.modules["psycopg"] = None  # type: ignore[assignment]
if os.environ["SAMPLE_DB"] == "postgres":
    _pg = {
        "ENGINE": "django.db.backends.postgresql",
        "USER": "conntrace_app",
        "PASSWORD": "Zq8-conntrace-S3CRET-pw",
        "HOST": os.environ["CONNTRACE_TEST_PGHOST"],
        "PORT": os.environ["CONNTRACE_TEST_PGPORT"],
    }
    DATABASES = {
        "default": {**_pg, "NAME": "conntrace", "TEST": {"NAME": _test_name}},
        "reference": {**_pg, "NAME": "conntrace_other", "TEST": {"NAME": _test_name + "_ref"}},
    }
else:
    _lite = {"ENGINE": "django.db.backends.sqlite3"}
    DATABASES = {
        "default": {
            **_lite,
            "NAME": os.path.join(_dir, "sample.sqlite3"),
            "TEST": {"NAME": os.path.join(_dir, _test_name + ".sqlite3")},
        },
        "reference": {**_lite, "NAME": os.path.join(_dir, "reference.sqlite3")},
    }

if os.environ.get("SAMPLE_POOL") == "1":
    # A second alias on the same test database, through a psycopg pool: Django closes the pool of
    # the alias whose test database it drops, not this one's.
    DATABASES["pooled"] = {
        **DATABASES["default"],
        "OPTIONS": {"pool": {"min_size": 1, "max_size": 2}},
        "TEST": {"MIRROR": "default"},
    }
