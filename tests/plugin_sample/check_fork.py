"""A test that forks, run first (pytest-django runs non-transactional tests before transactional ones,
which close every connection when they end).

``sampleapp`` opened the ``reference`` session while Django started; forking
now gives the child a copy of it. pytest-xdist's workers are not forks (they
are new interpreters), so only a fork made by a test is one.
"""

import os

import pytest

pytestmark = pytest.mark.django_db


def test_bad_fork_shares_the_reference_session():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def test_clean_no_database():
    assert os.getpid() > 0
