"""A throwaway PostgreSQL server on 127.0.0.1, for the tests and the storage benchmark.

``initdb`` in a temporary folder, ``postgres`` on a free port (TCP only, no Unix socket),
password authentication (scram-sha-256), stopped and deleted afterwards. The server binaries
are looked up in ``$PG_BIN``, on ``PATH``, through ``pg_config --bindir`` and in
``/usr/lib/postgresql/*/bin``. PostgreSQL refuses to run as root: as root the server runs as
the ``postgres`` user if there is one, else as ``nobody`` (no user is created).

Example (not run as a doctest: it needs a study, files or a server)::

    with PostgresServer() as pg:
        url = pg.create_database("study1")             # a URL with the password in it
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

#: Where Debian/Ubuntu's packages put the server binaries (one folder per major version).
DEBIAN_GLOB = "/usr/lib/postgresql/*/bin"
#: Users the server may run as when this process is root (first that exists).
SERVER_USERS = ("postgres", "nobody")


class PostgresUnavailable(RuntimeError):
    """No server binaries, or the server did not start; the message says why."""


def find_bin_dir() -> Path | None:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``, or ``None``."""
    candidates: list[Path] = []
    if os.environ.get("PG_BIN"):
        candidates.append(Path(os.environ["PG_BIN"]))
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            candidates.append(Path(out.stdout.strip()))
    versions = sorted(
        Path("/").glob(DEBIAN_GLOB.lstrip("/")), key=lambda p: _major(p.parent.name), reverse=True
    )
    candidates += versions
    for folder in candidates:
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def _major(text: str) -> int:
    return int(text) if text.isdigit() else -1


def _server_user() -> pwd.struct_passwd | None:
    """The user to run the server as (``None``: this process's own user, not root)."""
    if os.geteuid() != 0:
        return None
    for name in SERVER_USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresUnavailable(
        "running as root and neither a 'postgres' nor a 'nobody' user exists "
        "(PostgreSQL refuses root): create one, e.g. useradd --system postgres"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """Start with :meth:`start` (or ``with``); :meth:`create_database` gives a URL.

    Args:
        bin_dir: Folder of the server binaries (default: :func:`find_bin_dir`).
        durable: Keep ``fsync`` on. Off (the default) makes tests faster; a benchmark of
            storage overhead wants it on, like SQLite's default.
    """

    USER = "study"
    PASSWORD = "pg-secret-5c1e"

    def __init__(self, bin_dir: Path | None = None, durable: bool = False) -> None:
        self.bin_dir = bin_dir or find_bin_dir()
        if self.bin_dir is None:
            raise PostgresUnavailable(
                "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: install "
                "them (e.g. apt-get install postgresql) or set PG_BIN"
            )
        self.durable = durable
        self.port = 0
        self.root: Path | None = None
        self._user = _server_user()

    @property
    def log_path(self) -> Path:
        assert self.root is not None
        return self.root / "server.log"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        kwargs: dict = {}
        if self._user is not None:
            kwargs.update(user=self._user.pw_uid, group=self._user.pw_gid, extra_groups=[])
        return subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            env={**os.environ, "LC_ALL": "C", "LANG": "C"},
            **kwargs,
        )

    def start(self) -> PostgresServer:
        self.root = Path(tempfile.mkdtemp(prefix="batchsize-pg-"))
        password_file = self.root / "password"
        password_file.write_text(self.PASSWORD + "\n")
        if self._user is not None:
            for path in (self.root, password_file):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)
        data = self.root / "data"
        done = self._run(
            "initdb",
            "-D",
            str(data),
            "-U",
            self.USER,
            f"--pwfile={password_file}",
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        )
        if done.returncode != 0:
            self.stop()
            raise PostgresUnavailable(f"initdb failed: {done.stderr.strip() or done.stdout}")
        self.port = free_port()
        options = [
            "-c listen_addresses=127.0.0.1",
            f"-p {self.port}",
            "-c unix_socket_directories=''",
            "-c max_connections=200",
        ]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        done = self._run(
            "pg_ctl", "-D", str(data), "-l", str(self.log_path), "-o", " ".join(options), "-w",
            "-t", "60", "start",
        )  # fmt: skip
        if done.returncode != 0:
            log = self.log_path.read_text() if self.log_path.exists() else ""
            self.stop()
            raise PostgresUnavailable(f"postgres did not start: {done.stderr.strip()} {log}")
        return self

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        """``postgresql://study:<password>@127.0.0.1:<port>/<database>``."""
        secret = self.PASSWORD if password is None else password
        return f"postgresql://{self.USER}:{secret}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` (empty: Optuna creates its tables) and return its URL."""
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.root is None:
            return
        data = self.root / "data"
        if (data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop", timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
