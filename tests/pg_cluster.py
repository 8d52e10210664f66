"""A throwaway PostgreSQL cluster for tests: ``initdb`` into a temp folder, ``postgres`` listening on a unix socket
in that folder only (no TCP port, so no clash with anything else on the machine), trust auth, removed afterwards.

The server binaries come from ``$PPLUG_PG_BINDIR``, ``pg_ctl`` on PATH, or Debian's ``/usr/lib/postgresql/<v>/bin``
(``make postgres-deps`` installs them). ``initdb`` refuses to run as root, so under root the cluster runs as an
unprivileged account (``postgres``, which Debian's package creates, else ``nobody``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

PORT = 5432  # only names the socket file: the socket folder is private to this cluster
SUPERUSER = "pplug"


def find_bindir() -> Path | None:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``, or None when PostgreSQL is not installed."""
    candidates = [os.environ.get("PPLUG_PG_BINDIR")]
    if pg_ctl := shutil.which("pg_ctl"):
        candidates.append(str(Path(pg_ctl).resolve().parent))
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = sorted((d for d in debian.iterdir() if d.name.isdigit()), key=lambda d: -int(d.name))
        candidates += [str(d / "bin") for d in versions]
    for c in candidates:
        if c and all((Path(c) / exe).is_file() for exe in ("initdb", "pg_ctl", "postgres")):
            return Path(c)
    return None


def _account() -> pwd.struct_passwd | None:
    """The unprivileged account to run the cluster as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and no unprivileged account (postgres, nobody) to run PostgreSQL as")


@dataclass
class PgCluster:
    """A running cluster. ``url(db)`` is a SQLAlchemy URL over its unix socket."""

    bindir: Path
    root: Path  # data folder, socket and log; removed by stop()

    def _run(self, *args: str, timeout: float = 60) -> None:
        acct = _account()
        ids = dict(user=acct.pw_uid, group=acct.pw_gid, extra_groups=[]) if acct else {}
        r = subprocess.run([str(self.bindir / args[0]), *args[1:]], capture_output=True, text=True,
                           timeout=timeout, cwd=self.root, **ids)
        if r.returncode != 0:
            log = (self.root / "log").read_text() if (self.root / "log").exists() else ""
            raise RuntimeError(f"{args[0]} failed ({r.returncode}): {r.stderr.strip()}\n{log[-2000:]}")

    def start(self) -> PgCluster:
        if acct := _account():
            os.chown(self.root, acct.pw_uid, acct.pw_gid)
        self._run("initdb", "-D", str(self.root / "data"), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        opts = f"-c listen_addresses='' -c unix_socket_directories={self.root} -p {PORT}"
        self._run("pg_ctl", "-D", str(self.root / "data"), "-l", str(self.root / "log"), "-o", opts, "-w",
                  "-t", "60", "start")
        return self

    def url(self, db: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@/{db}?host={self.root}&port={PORT}"

    def create_database(self, name: str) -> str:
        """A fresh, empty database (dropped first if it exists); returns its URL."""
        import psycopg

        with psycopg.connect(host=str(self.root), port=PORT, user=SUPERUSER, dbname="postgres",
                             autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(bindir: Path) -> PgCluster:
    """initdb + start a cluster in a fresh folder under the system temp dir (not pytest's, which is private to
    root when we run as root, and whose long paths could pass the 107-byte unix socket path limit)."""
    cluster = PgCluster(bindir, Path(tempfile.mkdtemp(prefix="pplug-pg-")))
    try:
        return cluster.start()
    except BaseException:
        shutil.rmtree(cluster.root, ignore_errors=True)
        raise
