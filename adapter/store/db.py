"""The one database layer under every store module: SQLite (embedded) or PostgreSQL (psycopg 3).

Store modules write their SQL once, with ``?`` placeholders, and run it through a
:class:`Database`. What differs between the two engines lives here and nowhere else:

- placeholders (``?`` for sqlite3, ``%s`` for psycopg; a literal ``%`` is escaped);
- rows: both give :class:`DbRow`, readable by column name or position;
- ids of inserted rows: ``INSERT ... RETURNING id`` (SQLite >= 3.35 and PostgreSQL);
- JSON fields of a stored payload (:meth:`Database.json_text`);
- write transactions (:meth:`Database.write`). SQLite takes its single write lock up front
  (``BEGIN IMMEDIATE``), so writers are serialised. PostgreSQL lets writers run together; an
  *exclusive* write there also takes one transaction-scoped advisory lock
  (:data:`APPEND_LOCK`), which gives the writes that append rows or audit records the same
  one-at-a-time order SQLite gives them (the audit hash chain needs its predecessor; outbox ids
  then commit in id order, which per-key ordering relies on). Claims run as *shared* writes and
  use ``FOR UPDATE SKIP LOCKED`` instead (see ``adapter.store.claims``).

SQL that cannot be written once (the claim query, DDL types, triggers) is chosen by
:attr:`Database.dialect`. Nothing outside ``adapter/store/`` imports sqlite3 or psycopg
(``tests/unit/test_store_boundary.py``).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from adapter.errors import ConfigError

Params = Sequence[Any]
APPEND_LOCK = 0x7274_706C  # "rtpl": pg_advisory_xact_lock key of exclusive writes


class Dialect(StrEnum):
    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


class DbRow(Protocol):
    """A result row: by column name (``row["id"]``) or by position (``row[0]``)."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def keys(self) -> list[str]: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Any]: ...


class Result(Protocol):
    rowcount: int

    def fetchone(self) -> DbRow | None: ...

    def fetchall(self) -> list[DbRow]: ...

    def __iter__(self) -> Iterator[DbRow]: ...


class StoreUnavailable(ConfigError):
    """The store could not be opened (one line, never a password)."""


class _PgRow(tuple[Any, ...]):
    """psycopg's rows as sqlite3.Row behaves: by name or by position."""

    _names: dict[str, int]

    def __new__(cls, values: Sequence[Any], names: dict[str, int]) -> _PgRow:
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


def _pg_row_factory(cursor: Any) -> Any:
    names = {column.name: i for i, column in enumerate(cursor.description or ())}

    def make(values: Sequence[Any]) -> _PgRow:
        return _PgRow(values, names)

    return make


def redact(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url


class Database:
    """One connection to the store, in autocommit mode outside :meth:`write`."""

    def __init__(self, dialect: Dialect, connection: Any, name: str) -> None:
        self.dialect = dialect
        self.name = name  # the file path or the redacted URL: safe to print
        self._conn = connection
        self.driver_errors: tuple[type[Exception], ...] = (sqlite3.DatabaseError,)
        """What this driver raises for a database it cannot use (see ``Outbox.__init__``)."""
        self._depth = 0
        self._holds_append_lock = False

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def open_sqlite(cls, path: Path, *, check_same_thread: bool = True) -> Database:
        """The embedded store: WAL, ``synchronous=FULL`` (a committed row survives power loss,
        not only a crash), 30 s busy timeout for the other processes on the same file."""
        conn = sqlite3.connect(
            path, isolation_level=None, timeout=30.0, check_same_thread=check_same_thread
        )
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreUnavailable(str(path), f"not an outbox database ({exc})") from None
        return cls(Dialect.SQLITE, conn, str(path))

    @classmethod
    def open_postgresql(cls, url: str) -> Database:
        # Imported here, not at the top: psycopg costs ~0.1 s of start-up that every command
        # on the embedded SQLite default would otherwise pay (docs/benchmarks.md, start-up).
        import psycopg

        try:
            conn = psycopg.connect(url, autocommit=True, connect_timeout=30)
        except psycopg.Error as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            password = urlsplit(url).password
            if password:  # libpq may quote a fragment of the URL it could not parse
                first = first.replace(password, "***")
            raise StoreUnavailable("store.url", f"cannot open {redact(url)}: {first}") from None
        conn.row_factory = _pg_row_factory
        database = cls(Dialect.POSTGRESQL, conn, redact(url))
        database.driver_errors = (psycopg.Error,)
        return database

    def close(self) -> None:
        self._conn.close()

    def __del__(self) -> None:
        # A handle dropped without close() closes its connection, as sqlite3's does (psycopg
        # would otherwise warn from its own finaliser).
        with contextlib.suppress(Exception):
            self._conn.close()

    # -- statements ---------------------------------------------------------------------------

    def _sql(self, sql: str) -> str:
        if self.dialect is Dialect.SQLITE:
            return sql
        return sql.replace("%", "%%").replace("?", "%s")

    def execute(self, sql: str, params: Params = ()) -> Result:
        if self.dialect is Dialect.SQLITE:
            cursor: Result = self._conn.execute(sql, tuple(params))
            return cursor
        if not params:  # no placeholder processing: DDL bodies may hold a literal %
            return self._conn.execute(sql)  # type: ignore[no-any-return]
        return self._conn.execute(self._sql(sql), tuple(params))  # type: ignore[no-any-return]

    def insert(self, sql: str, params: Params = ()) -> int:
        """Run an INSERT and return the new row's ``id``."""
        raw = self.execute(sql + " RETURNING id", params).fetchone()
        assert raw is not None
        return int(raw[0])

    def scalar(self, sql: str, params: Params = ()) -> Any:
        raw = self.execute(sql, params).fetchone()
        return None if raw is None else raw[0]

    def json_text(self, column: str, *path: str) -> str:
        """An SQL expression for a text field inside a JSON column (``payload``)."""
        if self.dialect is Dialect.SQLITE:
            return f"json_extract({column}, '$.{'.'.join(path)}')"
        return f"({column}::jsonb #>> '{{{','.join(path)}}}')"

    def has_column(self, table: str, column: str) -> bool:
        if self.dialect is Dialect.SQLITE:
            return any(r["name"] == column for r in self.execute(f"PRAGMA table_info({table})"))
        found = self.execute(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = ? AND column_name = ?",
            (table, column),
        ).fetchone()
        return found is not None

    def has_table(self, table: str) -> bool:
        if self.dialect is Dialect.SQLITE:
            sql = "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?"
        else:
            sql = (
                "SELECT 1 FROM information_schema.tables "
                "WHERE table_schema = current_schema() AND table_name = ?"
            )
        return self.execute(sql, (table,)).fetchone() is not None

    # -- transactions -------------------------------------------------------------------------

    @property
    def in_transaction(self) -> bool:
        if self.dialect is Dialect.SQLITE:
            return bool(self._conn.in_transaction)
        from psycopg.pq import TransactionStatus  # loaded already: a PostgreSQL handle is open

        return bool(self._conn.info.transaction_status != TransactionStatus.IDLE)

    @contextlib.contextmanager
    def write(self, *, exclusive: bool = True) -> Iterator[Database]:
        """One write transaction; a nested call joins the open one.

        SQLite: ``BEGIN IMMEDIATE`` (the one write lock, taken up front). PostgreSQL: ``BEGIN``,
        and for an ``exclusive`` write the advisory :data:`APPEND_LOCK` until commit.
        """
        if self._depth:
            self._depth += 1
            try:
                if exclusive:  # an exclusive step inside a shared write takes the lock now
                    self._take_append_lock()
                yield self
            finally:
                self._depth -= 1
            return
        if self.dialect is Dialect.SQLITE:
            self.execute("BEGIN IMMEDIATE")
        elif exclusive:  # one round trip for both (no parameters: the simple query protocol)
            try:
                self.execute(f"BEGIN; SELECT pg_advisory_xact_lock({APPEND_LOCK})")
            except BaseException:  # begun, but the lock failed (cancelled, connection lost)
                with contextlib.suppress(Exception):
                    self.execute("ROLLBACK")
                raise
            self._holds_append_lock = True
        else:
            self.execute("BEGIN")
        self._depth = 1
        try:
            if exclusive:
                self._take_append_lock()  # SQLite: nothing; PostgreSQL: taken above
            yield self
        except BaseException:
            self._end()
            with contextlib.suppress(Exception):  # a broken connection has no transaction left
                self.execute("ROLLBACK")
            raise
        self._end()
        self.execute("COMMIT")

    def _take_append_lock(self) -> None:
        if self.dialect is Dialect.POSTGRESQL and not self._holds_append_lock:
            self.execute("SELECT pg_advisory_xact_lock(?)", (APPEND_LOCK,))
            self._holds_append_lock = True

    def _end(self) -> None:
        self._depth = 0
        self._holds_append_lock = False


def open_database(target: Path | str, *, check_same_thread: bool = True) -> Database:
    """Open the store named by a path (SQLite), ``sqlite:///PATH`` or ``postgresql://...``."""
    text = str(target)
    if isinstance(target, str) and text.startswith(("postgresql://", "postgres://")):
        return Database.open_postgresql(text)
    if isinstance(target, str) and text.startswith("sqlite:///"):
        target = Path(text.removeprefix("sqlite:///"))
    return Database.open_sqlite(Path(target), check_same_thread=check_same_thread)
