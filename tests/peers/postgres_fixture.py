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
* ``pg_url``: a fresh database per test.
* ``store_url`` (parametrised ``sqlite`` / ``postgresql``): what ``Outbox(...)`` opens, a
  SQLite path in ``tmp_path`` or a fresh PostgreSQL database. The store tests take it so that
  each runs on both backends.
* ``cli_store`` (parametrised): the same for the CLI: a :class:`CliStore` whose ``env`` (and
  this process's environment) has ``RTPLAN_STORE__URL`` set to a fresh PostgreSQL database,
  or unset for SQLite; ``cli_store.location(default)`` is what the test opens to check.
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

import psycopg
import pytest

BACKENDS = ["sqlite", "postgresql"]


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


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """A store location for ``Outbox(...)``: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "o.sqlite"
    cluster: PgCluster = request.getfixturevalue("postgres")
    return cluster.new_database()


@dataclass(frozen=True)
class CliStore:
    backend: str
    url: str | None  # RTPLAN_STORE__URL, None on SQLite
    env: dict[str, str]  # for subprocess runs

    def location(self, sqlite_file: Path) -> Path | str:
        """What the CLI wrote to: the PostgreSQL database, else the SQLite file it names."""
        return sqlite_file if self.url is None else self.url


@pytest.fixture(params=BACKENDS)
def cli_store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> CliStore:
    """A CLI run on each backend: ``RTPLAN_STORE__URL`` unset (the SQLite file the other
    options name) or set to a fresh PostgreSQL database, in ``env`` and in this process's
    environment (``monkeypatch``, for in-process ``main([...])`` calls)."""
    env = dict(os.environ)
    if request.param == "postgresql":
        cluster: PgCluster = request.getfixturevalue("postgres")
        url = cluster.new_database()
        env["RTPLAN_STORE__URL"] = url
        monkeypatch.setenv("RTPLAN_STORE__URL", url)
        return CliStore(request.param, url, env)
    env.pop("RTPLAN_STORE__URL", None)
    monkeypatch.delenv("RTPLAN_STORE__URL", raising=False)
    return CliStore(request.param, None, env)
