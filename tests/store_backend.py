"""pytest plugin: the one store fixture. Every test that reaches the adapter's store runs once
per backend: on the embedded SQLite file, then on PostgreSQL (issue 8).

Which tests: those marked ``store`` (most modules mark themselves with
``pytestmark = pytest.mark.store``) and those that take ``store_url`` or ``cli_store``. A test
about the SQLite file itself (its permissions, its migration from an earlier release, ``--db
FILE``) is marked ``sqlite_only(reason)`` and runs once, on SQLite. Tests that never touch a
store run once and are not parametrised.

The ``store`` fixture (:class:`StoreUnderTest`):

* ``sqlite``: ``RTPLAN_STORE__URL`` unset, so the CLI and the in-process jobs use the SQLite
  file their options name (``--out DIR``: ``DIR/outbox.sqlite``); ``store.at(path)`` is that
  path.
* ``postgresql``: a fresh database cloned from a migrated template in the session's
  throwaway cluster (``tests.peers.postgres_fixture``), dropped after the test.
  ``RTPLAN_STORE__URL`` (the documented setting, docs/operations.md) names it in this
  process's environment, so subprocess CLI runs and ``load_settings()`` use it;
  a :class:`Settings` the test builds while it runs (``Settings()`` reads no environment) has
  it as its ``store.url`` default;
  ``store.at(path)`` maps the SQLite file a test would open to the database the adapter used
  instead: the test's database, unless ``store.separate(path)`` or ``store.point_cli(...)``
  gave that file a database of its own (a test that needs two stores).

Checked after every test (so that no store test silently runs on one backend): a test that is
not parametrised over the backends must not leave a SQLite store in its ``tmp_path`` (mark it
``store`` or ``sqlite_only``), and a test on ``postgresql`` must not leave one either (part of
it still ran on SQLite).

``--store-backend sqlite`` runs the whole suite on SQLite; ``--store-backend postgresql`` runs
only the store tests, on PostgreSQL; the default ``both`` runs everything once and the store
tests on both.
"""

from __future__ import annotations

import gc
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from adapter.config import StoreSettings

BACKENDS = ("sqlite", "postgresql")
SQLITE_MAGIC = b"SQLite format 3\x00"
OUTBOX_TABLE = b"CREATE TABLE outbox ("  # the schema's text, as SQLite keeps it
READ_LIMIT = 4 << 20
URL_VARIABLE = "RTPLAN_STORE__URL"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--store-backend",
        choices=("both", *BACKENDS),
        default="both",
        help="store backend(s) for the store tests: both (default), sqlite (the whole suite on "
        "SQLite) or postgresql (only the store tests, on PostgreSQL)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "store: reaches the adapter's store; runs once per backend (fixture `store`)"
    )
    config.addinivalue_line(
        "markers", "sqlite_only(reason): about the SQLite file itself; runs on SQLite only"
    )


def _is_store_test(metafunc: pytest.Metafunc) -> bool:
    if metafunc.definition.get_closest_marker("store") is not None:
        return True
    return any(name in metafunc.fixturenames for name in ("store_url", "cli_store"))


def _chosen(config: pytest.Config) -> list[str]:
    chosen = config.getoption("--store-backend")
    return list(BACKENDS) if chosen == "both" else [chosen]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "module_store" in metafunc.fixturenames:
        metafunc.parametrize(
            "module_store", _chosen(metafunc.config), indirect=True, scope="module"
        )
    only = metafunc.definition.get_closest_marker("sqlite_only")
    if only is not None:
        reason = only.kwargs.get("reason") or (only.args[0] if only.args else "")
        if not reason:
            raise pytest.UsageError(f"{metafunc.definition.nodeid}: sqlite_only needs a reason")
        metafunc.parametrize("store", ["sqlite"], indirect=True)
        return
    if not _is_store_test(metafunc):
        return
    metafunc.parametrize("store", _chosen(metafunc.config), indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``--store-backend postgresql``: only the tests that ran on PostgreSQL (the rest ran in
    the SQLite pass)."""
    if config.getoption("--store-backend") != "postgresql":
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        spec = getattr(item, "callspec", None)
        on_pg = spec is not None and "postgresql" in (
            spec.params.get("store"),
            spec.params.get("module_store"),
        )
        (keep if on_pg else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@dataclass
class StoreUnderTest:
    """The store of one test: which backend, and where the adapter finds it."""

    backend: str  # "sqlite" | "postgresql" | "none" (a test that is not a store test)
    url: str | None = None  # the test's PostgreSQL database (RTPLAN_STORE__URL); None on SQLite
    _new_database: Callable[[], str] | None = None  # another database (separate)
    _databases: dict[Path, str] = field(default_factory=dict)

    @property
    def postgresql(self) -> bool:
        return self.url is not None

    def at(self, sqlite_file: Path | str) -> Path | str:
        """What to open for the store a test names by its SQLite file: the file itself on
        SQLite; on PostgreSQL the test's database (the one ``RTPLAN_STORE__URL`` names, which
        the commands use whatever ``--out`` says), or the database of its own that
        :meth:`separate` gave the file."""
        if self.url is None:
            return Path(sqlite_file)
        return self._databases.get(Path(sqlite_file).resolve(), self.url)

    def separate(self, sqlite_file: Path | str) -> Path | str:
        """A second store, apart from the test's: the file on SQLite, a database of its own
        on PostgreSQL (``at(sqlite_file)`` names it from now on)."""
        if self.url is None:
            return Path(sqlite_file)
        key = Path(sqlite_file).resolve()
        if key not in self._databases:
            assert self._new_database is not None
            self._databases[key] = self._new_database()
        return self._databases[key]

    def db_option(self, sqlite_file: Path) -> list[str]:
        """A command's ``--db FILE`` on SQLite; nothing on PostgreSQL, where
        ``RTPLAN_STORE__URL`` names the store (``--db`` names a SQLite file and would win)."""
        return ["--db", str(sqlite_file)] if self.url is None else []

    def point_cli(self, monkeypatch: pytest.MonkeyPatch, sqlite_file: Path) -> None:
        """Make this process's commands use a second store, named by ``sqlite_file``:
        ``RTPLAN_OUTBOX__PATH`` on SQLite, ``RTPLAN_STORE__URL`` naming a database of its own
        (:meth:`separate`) on PostgreSQL."""
        if self.url is None:
            monkeypatch.setenv("RTPLAN_OUTBOX__PATH", str(sqlite_file))
        else:
            monkeypatch.setenv(URL_VARIABLE, str(self.separate(sqlite_file)))

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """An environment for a subprocess: ``base`` (default: this process's) with
        ``RTPLAN_STORE__URL`` naming this test's database, or without it on SQLite."""
        env = dict(os.environ if base is None else base)
        env.pop(URL_VARIABLE, None)
        if self.url is not None:
            env[URL_VARIABLE] = self.url
        return env


@pytest.fixture(scope="module")
def module_store(request: pytest.FixtureRequest) -> Iterator[str]:
    """A store for a whole module (one running service for many generated requests), once per
    backend: ``""`` on SQLite (the file the options name), else the URL of a database cloned
    from the template and dropped after the module. The caller passes it on as ``store.url``."""
    if request.param != "postgresql":
        yield ""
        return
    cluster = request.getfixturevalue("postgres")
    url: str = cluster.clone(request.getfixturevalue("store_template"))
    try:
        yield url
    finally:
        cluster.drop([url])


def sqlite_stores(root: Path) -> list[Path]:
    """The adapter's SQLite stores under ``root``: SQLite files (by their header, whatever
    their name) whose schema, in the file or its write-ahead log, has the outbox table. Other
    SQLite files (a peer's own, such as Orthanc's index) are not the adapter's store."""
    found = []
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            try:
                with path.open("rb") as handle:
                    if handle.read(16) != SQLITE_MAGIC:
                        continue
                    text = handle.read(READ_LIMIT)
                wal = path.with_name(name + "-wal")
                if wal.exists():
                    with wal.open("rb") as handle:
                        text += handle.read(READ_LIMIT)
            except OSError:
                continue
            if OUTBOX_TABLE in text:
                found.append(path)
    return found


@pytest.fixture(autouse=True)
def store(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[StoreUnderTest]:
    backend = getattr(request, "param", "none")
    # Taken now, so that tmp_path outlives this fixture (it is checked after the test).
    tmp_path = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    if backend == "postgresql":
        from tests.peers.postgres_fixture import PgCluster

        cluster: PgCluster = request.getfixturevalue("postgres")
        template: str = request.getfixturevalue("store_template")
        made: list[str] = []

        def new_database() -> str:
            url = cluster.clone(template)
            made.append(url)
            return url

        under_test = StoreUnderTest(backend, new_database(), new_database)
        monkeypatch.setenv(URL_VARIABLE, under_test.url or "")
        # A Settings() the test builds itself does not read the environment: its store.url
        # (empty by default) names the test's database too.
        assert StoreSettings.__init__.__defaults__ == ("",), "StoreSettings changed shape"
        monkeypatch.setattr(StoreSettings.__init__, "__defaults__", (under_test.url,))
    else:
        made = []
        under_test = StoreUnderTest(backend)
        monkeypatch.delenv(URL_VARIABLE, raising=False)
    try:
        yield under_test
    finally:
        if made:
            # Handles a test left open (``outbox = Outbox(...)`` without close, often in a
            # reference cycle) are collected here, quietly as sqlite3 closes them, not when a
            # later test happens to run the collector.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                gc.collect()
            cluster.drop(made)
    _check_no_sqlite_left(tmp_path, backend)


def _check_no_sqlite_left(tmp_path: Path | None, backend: str) -> None:
    if backend == "sqlite" or tmp_path is None:
        return
    left = sqlite_stores(tmp_path)
    if not left:
        return
    names = ", ".join(sorted(p.name for p in left))
    if backend == "postgresql":
        pytest.fail(f"on the postgresql backend this test still wrote a SQLite store ({names})")
    pytest.fail(
        f"this test wrote a SQLite store ({names}) but runs on one backend only: mark it "
        "`store` (runs on both) or `sqlite_only(reason)`"
    )
