"""What the SQL sinks (:mod:`conveyor.connectors.sql`) and the SQL sources
(:mod:`conveyor.connectors.sql_sources`) share: quoting identifiers by each driver's rules,
splitting ``schema.table``, and a DSN fit for messages (no password).

Values never go through these helpers: they are always bound as parameters.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "pg_identifier",
    "pg_name",
    "pg_regclass",
    "pg_split",
    "safe_dsn",
    "sqlite_quote",
]


def sqlite_quote(name: str) -> str:
    """``name`` as a SQLite identifier: in double quotes, inner double quotes doubled.

    >>> sqlite_quote("readings"), sqlite_quote('t"; DROP TABLE x;--')
    ('"readings"', '"t""; DROP TABLE x;--"')
    """
    return '"' + name.replace('"', '""') + '"'


def pg_split(table: str) -> tuple[str | None, str]:
    """``schema.table`` as ``(schema, table)``; ``(None, table)`` without a dot (the last
    dot separates them, as the PostgreSQL sink has always read it).

    >>> pg_split("public.readings"), pg_split("readings")
    (('public', 'readings'), (None, 'readings'))
    """
    schema, _, bare = table.rpartition(".")
    return schema or None, bare


def pg_identifier(schema: str | None, bare: str) -> Any:
    """The table as a psycopg ``sql.Identifier`` (``"schema"."table"`` when qualified)."""
    from psycopg import sql

    if schema:
        return sql.Identifier(schema, bare)
    return sql.Identifier(bare)


def pg_name(*parts: str) -> Any:
    """``parts`` as one psycopg identifier (``"schema"."table"``, ``"column"``) for a query
    run *with* parameters: quoted by psycopg's rules, then its ``%`` doubled, because psycopg
    reads every ``%`` of such a query as a placeholder (``sql.Identifier("p%ct")`` alone
    makes the query fail).

    >>> from psycopg import sql
    >>> sql.SQL("SELECT {} FROM t WHERE id = %s").format(pg_name("p%ct")).as_string(None)
    'SELECT "p%%ct" FROM t WHERE id = %s'
    """
    from psycopg import sql

    return sql.SQL(sql.Identifier(*parts).as_string(None).replace("%", "%%"))


def pg_regclass(schema: str | None, bare: str) -> str:
    """The quoted name to bind as the parameter of ``to_regclass(%s)`` (so that a table
    name is looked up exactly as written, whatever it contains).

    >>> pg_regclass("public", 'we"ird')
    '"public"."we""ird"'
    """

    def quote(part: str) -> str:
        return '"' + part.replace('"', '""') + '"'

    return f"{quote(schema)}.{quote(bare)}" if schema else quote(bare)


def safe_dsn(dsn: str) -> str:
    """The DSN without a password, for messages: ``host:port/dbname``.

    >>> safe_dsn("postgresql://me:secret@db.example:6543/sales")
    'db.example:6543/sales'
    """
    try:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(dsn)
    except Exception:
        return "<dsn>"
    host = parts.get("host", "localhost")
    port = parts.get("port", "5432")
    db = parts.get("dbname", "")
    return f"{host}:{port}/{db}"
