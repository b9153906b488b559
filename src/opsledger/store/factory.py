"""Open a store from one URL, so configuration needs a single ``store`` setting.

Accepted forms::

    sqlite:///relative/path.db        relative to the working directory
    sqlite:////absolute/path.db       absolute (four slashes, as SQLAlchemy spells it)
    /some/path.db, data/ledger.db     a bare filesystem path means SQLite
    postgresql://user@host:5432/db?schema=NAME    (also postgres://; schema optional)

``schema`` is ours, not libpq's, so it is removed from the query string before the DSN
reaches psycopg; other query parameters (``sslmode`` ...) pass through untouched.
Errors name the URL scheme, never the URL: it may carry a password.
"""

from __future__ import annotations

from urllib.parse import unquote

from opsledger.core.errors import ConfigError
from opsledger.store.base import LedgerStore
from opsledger.store.sqlite import SqliteStore

__all__ = ["open_store"]

_SQLITE_PREFIX = "sqlite:///"
_POSTGRES_SCHEMES = ("postgresql", "postgres")


def open_store(url: str) -> LedgerStore:
    """Build the store ``url`` names and ``initialize()`` it (idempotent)."""
    store = _make_store(url)
    try:
        store.initialize()
    except BaseException:
        store.close()
        raise
    return store


def _make_store(url: str) -> LedgerStore:
    text = url.strip()
    if not text:
        raise ConfigError("the store URL is empty", key="store")
    if "://" not in text:
        return SqliteStore(text)
    scheme = text.split("://", 1)[0].lower()
    if scheme == "sqlite":
        if not text.startswith(_SQLITE_PREFIX) or len(text) == len(_SQLITE_PREFIX):
            raise ConfigError(
                "a sqlite store URL is sqlite:///relative/path or sqlite:////absolute/path",
                key="store",
                scheme=scheme,
            )
        return SqliteStore(text[len(_SQLITE_PREFIX) :])
    if scheme in _POSTGRES_SCHEMES:
        dsn, schema = _split_schema(text)
        # imported here: psycopg costs ~0.2 s of start-up that SQLite users never need
        from opsledger.store.postgres import PostgresStore

        return PostgresStore(dsn) if schema is None else PostgresStore(dsn, schema=schema)
    raise ConfigError(
        f"unsupported store URL scheme {scheme!r} (use sqlite:/// or postgresql://)",
        key="store",
        scheme=scheme,
    )


def _split_schema(url: str) -> tuple[str, str | None]:
    """Remove ``schema=NAME`` from the query string; keep every other byte as given.

    The query is edited as raw text, not parsed and re-encoded, because re-encoding can
    change what libpq reads (``+`` versus ``%20`` in ``options``).
    """
    base, sep, rest = url.partition("?")
    if not sep:
        return url, None
    query, hash_sep, fragment = rest.partition("#")
    kept: list[str] = []
    schema: str | None = None
    for item in query.split("&"):
        name, _, value = item.partition("=")
        if unquote(name) != "schema":
            if item:
                kept.append(item)
            continue
        if schema is not None:
            raise ConfigError("the store URL names schema= twice", key="store.schema")
        schema = unquote(value)
        if not schema:
            raise ConfigError("the store URL has an empty schema=", key="store.schema")
    dsn = base + ("?" + "&".join(kept) if kept else "") + hash_sep + fragment
    return dsn, schema
