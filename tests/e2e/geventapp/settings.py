"""Settings of the gevent project: the end-to-end project's, on psycopg2, with this project's URLs."""

from tests.base_settings import use_psycopg2

use_psycopg2()  # psycogreen makes psycopg2 cooperative; Django would pick psycopg 3 if it could

from tests.e2e.settings import *  # noqa: E402, F403

ROOT_URLCONF = "tests.e2e.geventapp.urls"
