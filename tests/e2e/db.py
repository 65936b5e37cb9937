"""Create the end-to-end project's database on the test PostgreSQL (as the superuser, with psql)."""

from __future__ import annotations

from tests import pgserver

SITE_NAME = "Conntrace Test Shop"


def create(name: str = "conntrace_e2e") -> str:
    """(Re)create database ``name`` with the ``shop_setting`` table the project reads at import time."""
    pg = pgserver.server()
    pg.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    pg.psql(f"CREATE DATABASE {name} OWNER {pgserver.APP_USER}")
    pg.psql(
        "CREATE TABLE shop_setting (id serial PRIMARY KEY, key varchar(100) UNIQUE NOT NULL, "
        "value varchar(200) NOT NULL);"
        f"ALTER TABLE shop_setting OWNER TO {pgserver.APP_USER};"
        f"INSERT INTO shop_setting (key, value) VALUES ('site_name', '{SITE_NAME}');",
        database=name,
    )
    return name
