"""pytest plugin: a throwaway PostgreSQL cluster from Debian's ``postgresql`` package.

``initdb`` and ``pg_ctl`` come from ``/usr/lib/postgresql/<major>/bin`` (the newest present).
The cluster lives in a fresh temporary folder, listens on a Unix socket in that folder only
(no TCP at all), and is stopped (by its postmaster PID, through ``pg_ctl``) and removed after
the session. A system cluster is never touched. PostgreSQL refuses to run as root: when the
tests run as root (CI does), the cluster runs as the unprivileged ``postgres`` account the
package creates. A missing binary or account FAILS the tests, never skips them.

Fixtures:

* ``postgres`` (session): a :class:`PgCluster`; ``cluster.new_database()`` returns the
  ``postgresql://`` URL of a fresh, empty database.
* ``pg_url``: a fresh, empty database per test.
* ``store_template`` (session): a database with every migration applied, which each store
  test's database is cloned from (``cluster.clone(url)``; ``cluster.drop(urls)`` after).
* ``store_url`` and ``cli_store``: the older names for the store fixture
  (``tests.store_backend``): a test that takes one runs on both backends. ``store_url`` is what
  ``Outbox(...)`` opens; a :class:`CliStore` has the ``env`` for a subprocess and
  ``location(default)``, what the test opens to check.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest

if TYPE_CHECKING:
    from tests.store_backend import StoreUnderTest


def pg_bin() -> Path:
    """The newest ``/usr/lib/postgresql/<major>/bin`` that has ``initdb`` and ``pg_ctl``."""
    found = sorted(
        (p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not found or not (found[-1] / "pg_ctl").exists():
        pytest.fail(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin "
            "(Debian package postgresql; .ci/run installs it)"
        )
    return found[-1]


@dataclass
class PgCluster:
    root: Path
    socket_dir: Path
    port: int
    user: str
    _names: Iterator[int]

    def url(self, database: str = "postgres") -> str:
        return f"postgresql:///{database}?host={self.socket_dir}&port={self.port}&user={self.user}"

    def new_database(self) -> str:
        name = f"rtplan_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def clone(self, template_url: str) -> str:
        """A fresh database, a copy of ``template_url``'s (which nobody may be connected to).
        FILE_COPY: for a small database a plain file copy (~25 ms) is about twice as quick as
        the WAL-logged default."""
        name = f"rtplan_{os.getpid()}_{next(self._names)}"
        template = _database_name(template_url)
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
        return self.url(name)

    def drop(self, urls: list[str]) -> None:
        """Drop these databases, ending any session still connected to them (a test's
        subprocess killed mid-run, a handle a test never closed)."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            for url in urls:
                conn.execute(f'DROP DATABASE IF EXISTS "{_database_name(url)}" WITH (FORCE)')


def _database_name(url: str) -> str:
    return url.removeprefix("postgresql:///").split("?", 1)[0]


def _run_as(user: str | None) -> dict[str, object]:
    """subprocess arguments that run a command as ``user`` (None: as ourselves)."""
    if user is None:
        return {}
    account = pwd.getpwnam(user)
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_clusters() -> None:
    """Stop and remove the clusters of test sessions that were killed before their teardown
    (their ``owner.pid`` names a process that is gone). Only folders this module made."""
    for root in Path("/tmp").glob("rtplan-pg-*"):
        marker = root / "owner.pid"
        try:
            owner = int(marker.read_text())
        except (OSError, ValueError):
            continue
        if not _alive(owner):
            stop_cluster(PgCluster(root, root, 0, "", itertools.count()))


def start_cluster(*, durable: bool = False) -> PgCluster:
    """Start a cluster in a new temp folder. ``durable=False`` turns fsync off (tests only:
    the data is thrown away); the benchmark passes True to compare with SQLite's FULL sync."""
    bin_dir = pg_bin()
    remove_stale_clusters()
    owner: str | None = None
    if os.geteuid() == 0:
        owner = "postgres"
        try:
            pwd.getpwnam(owner)
        except KeyError:
            pytest.fail("running as root and no 'postgres' account to run the test cluster as")
    # Short path: a Unix socket path must stay under 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="rtplan-pg-", dir="/tmp"))
    (root / "owner.pid").write_text(str(os.getpid()))
    data, log = root / "data", root / "server.log"
    if owner is not None:
        account = pwd.getpwnam(owner)
        os.chown(root, account.pw_uid, account.pw_gid)
    user = "rtplan"
    as_owner = _run_as(owner)
    initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", user, "--auth=trust"]
    initdb += ["-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]
    subprocess.run(initdb, check=True, capture_output=True, **as_owner)  # type: ignore[call-overload]
    port = 5432  # only names the socket file: there is no TCP listener
    options = f"-k {root} -c listen_addresses='' -p {port} -c max_connections=50"
    if not durable:
        options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options]
    pg_ctl += ["-w", "-t", "120", "start"]
    started = subprocess.run(pg_ctl, capture_output=True, text=True, **as_owner)  # type: ignore[call-overload]
    if started.returncode != 0:
        detail = log.read_text(errors="replace")[-2000:] if log.exists() else started.stderr
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"PostgreSQL test cluster did not start: {detail}")
    return PgCluster(root, root, port, user, itertools.count(1))


def stop_cluster(cluster: PgCluster) -> None:
    bin_dir = pg_bin()
    owner = "postgres" if os.geteuid() == 0 else None
    with contextlib.suppress(subprocess.CalledProcessError):
        subprocess.run(
            [str(bin_dir / "pg_ctl"), "-D", str(cluster.root / "data"), "-m", "immediate", "stop"],
            check=True,
            capture_output=True,
            **_run_as(owner),  # type: ignore[call-overload]
        )
    shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgCluster]:
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


@pytest.fixture
def pg_url(postgres: PgCluster) -> str:
    return postgres.new_database()


@pytest.fixture(scope="session")
def store_template(postgres: PgCluster) -> str:
    """A database with every schema migration applied: what each store test's database is
    cloned from (``tests.store_backend``)."""
    from adapter.store.outbox import Outbox

    url = postgres.new_database()
    Outbox(url).close()
    return url


@pytest.fixture
def store_url(store: StoreUnderTest, tmp_path: Path) -> Path | str:
    """A store location for ``Outbox(...)``: a SQLite file, then a fresh PostgreSQL database
    (the ``store`` fixture's backends)."""
    return store.at(tmp_path / "o.sqlite")


@dataclass(frozen=True)
class CliStore:
    backend: str
    url: str | None  # RTPLAN_STORE__URL, None on SQLite
    env: dict[str, str]  # for subprocess runs
    store: StoreUnderTest

    def location(self, sqlite_file: Path) -> Path | str:
        """What the CLI wrote to: the PostgreSQL database, else the SQLite file it names."""
        return self.store.at(sqlite_file)


@pytest.fixture
def cli_store(store: StoreUnderTest) -> CliStore:
    """A CLI run on each backend (the ``store`` fixture): ``RTPLAN_STORE__URL`` unset (the
    SQLite file the other options name) or naming the test's PostgreSQL database, in ``env``
    and in this process's environment (for in-process ``main([...])`` calls)."""
    return CliStore(store.backend, store.url, store.env(), store)
