"""One frozen configuration object, built once from env vars (and CLI options).

Every piece lives under ``MINER_HOME`` by default, so a laptop needs no servers:

* database: SQLite at ``$MINER_HOME/miner.db``            (``MINER_DB_URL``)
* broker: a private Redis server on a Unix socket, started and stopped as needed, with its data in
  ``$MINER_HOME/broker`` (:mod:`miner.runtime.broker`; ``MINER_BROKER_URL`` points elsewhere)
* result backend: SQLite at ``$MINER_HOME/results.db``      (``MINER_RESULT_BACKEND``)
* artifacts (embeddings, indexes, kNN results): ``$MINER_HOME/artifacts``  (``MINER_ARTIFACTS``)

``MINER_HOME`` defaults to ``./.miner`` when that folder exists, else to the user's data dir
(``$XDG_DATA_HOME/bitext-miner`` or ``~/.local/share/bitext-miner``).

Fields that do not change results (threads, queue names, URLs) never enter cache keys.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from pathlib import Path

from miner.runtime import broker
from miner.runtime.errors import UsageError
from miner.io.storage import is_url, local_path, parse_size

EMBED_QUEUE = "embed"
DEFAULT_QUEUE = "miner"

#: Every environment variable the configuration reads, with what it sets.
ENV_VARS = {
    "MINER_HOME": "folder for the embedded database, broker, logs and artifacts",
    "MINER_DB_URL": "SQLAlchemy URL of the database (sqlite:///..., postgresql+psycopg://...)",
    "MINER_BROKER_URL": "Celery broker (redis://host:6379/0, ...; unset: a private Redis server under MINER_HOME)",
    "MINER_RESULT_BACKEND": "Celery result backend (not used for flow control)",
    "MINER_ARTIFACTS": "folder or object-store URL (s3://bucket/prefix) for embeddings, indexes and kNN results, "
                       "shared by all workers",
    "MINER_CACHE": "local folder where a worker keeps copies of remote artifacts it memory-maps (default $MINER_HOME/cache)",
    "MINER_CACHE_LIMIT": "size of MINER_CACHE (e.g. 20G, 512M); least recently used copies are removed first (default 20G)",
    "MINER_THREADS": "BLAS/torch/FAISS threads per worker process (unset: a share of the host's cores)",
    "MINER_CORES_DIR": "host-local folder where the workers of one machine register to share its cores "
                       "(default /tmp/bitext-miner-<uid>/cores; one volume for all worker containers of a host)",
    "MINER_EMBED_BATCH_SIZE": "sentences per encode batch",
    "MINER_DEVICE": "torch device for sentence-transformers models (cpu, cuda, cuda:1)",
    "MINER_STALL_SECONDS": "a job with no sign of life for this long gets its missing tasks sent again",
    "MINER_HEARTBEAT_SECONDS": "a running unit renews its lease this often (default 3)",
    "MINER_LEASE_SECONDS": "a unit whose lease was not renewed for this long is lost and sent again (default 15)",
    "MINER_TRUST_REMOTE_CODE": "1: mine/submit act as if given --trust-remote-code (let a model run its own code)",
    "MINER_API_TOKEN": "miner serve: every /api call needs 'Authorization: Bearer TOKEN' (and a non-loopback --host needs one)",
    "MINER_ALLOWED_HOSTS": "miner serve: host names (comma-separated) the Host header of a request may carry "
                           "(default: localhost, 127.0.0.1, ::1 and the --host it binds; with MINER_API_TOKEN set "
                           "and this unset, any)",
    "MINER_API_MODELS": "miner serve: the models (comma-separated aliases, Hugging Face ids or local directories) "
                        "that jobs submitted over HTTP may use (unset: any alias or id, local directories under "
                        "MINER_INPUT_ROOTS)",
    "MINER_INPUT_ROOTS": "miner serve: folders (os.pathsep-separated) that jobs submitted over HTTP may read from "
                         "(default: the current directory)",
    "MINER_INPUT_URLS": "miner serve: object-store URL prefixes (comma-separated, e.g. s3://corpora/) that jobs "
                        "submitted over HTTP may read from (unset: none)",
    "MINER_SPOOL_LIMIT": "the most bytes mine/submit copy from standard input (-) or a named pipe into "
                         "MINER_ARTIFACTS/inputs (e.g. 50G, 512M; default 64G)",
    "MINER_CONFIG": "a file of NAME=value lines for any of these (the environment wins)",
}
#: Variables that may hold credentials: each also reads from the file named by ``<NAME>_FILE``
#: (Docker/Kubernetes secrets), and is never printed unmasked.
SECRET_VARS = ("MINER_DB_URL", "MINER_BROKER_URL", "MINER_RESULT_BACKEND", "MINER_API_TOKEN")


def read_env(env: dict | None = None) -> dict:
    """The process environment, completed by the ``MINER_CONFIG`` file and ``*_FILE`` secrets."""
    env = dict(os.environ if env is None else env)
    merged = {}
    config_file = env.get("MINER_CONFIG")
    if config_file:
        merged.update(_read_config_file(Path(config_file).expanduser()))
    merged.update({k: v for k, v in env.items() if v != ""})
    for name in SECRET_VARS:
        secret = merged.get(f"{name}_FILE")
        if secret and not env.get(name):
            try:
                merged[name] = Path(secret).expanduser().read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise UsageError(f"{name}_FILE={secret}: cannot read it ({exc.strerror})") from None
    return merged


def _read_config_file(path: Path) -> dict:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"MINER_CONFIG={path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise UsageError(f"MINER_CONFIG={path}: not a UTF-8 text file") from None
    values = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.removeprefix("export ").partition("=")
        name = name.strip()
        if not sep or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", name):
            raise UsageError(f"MINER_CONFIG={path}, line {number}: expected NAME=value, got {line[:80]!r}")
        if name not in ENV_VARS and not (name.endswith("_FILE") and name[:-5] in SECRET_VARS):
            raise UsageError(f"MINER_CONFIG={path}, line {number}: unknown setting {name} "
                             f"(known: {', '.join(sorted(ENV_VARS))})")
        values[name] = value.strip().strip("'\"")
    return values


def default_cores_dir() -> Path:
    """Where the workers of this machine register to share its cores (``MINER_CORES_DIR`` unset)."""
    return Path("/tmp") / f"bitext-miner-{os.getuid()}" / "cores"


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (containers)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def limit_threads(threads: int) -> None:
    """One bounded thread pool per process for BLAS, torch and FAISS (no oversubscription)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except Exception:  # threadpoolctl finds nothing to limit: fine
        pass
    # torch and FAISS only when already imported: importing them here would cost a task that uses
    # neither (ingest, or muse's numpy encoder) a second or more. One imported later starts its
    # OpenMP pool from OMP_NUM_THREADS, set above.
    for name, setter in (("torch", "set_num_threads"), ("faiss", "omp_set_num_threads")):
        module = sys.modules.get(name)
        if module is not None:
            try:
                getattr(module, setter)(threads)
            except Exception:
                pass


def default_home() -> Path:
    """The folder used when ``MINER_HOME`` is not set."""
    local = Path.cwd() / ".miner"
    if local.is_dir():
        return local
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "bitext-miner"


def _int_env(env: dict, name: str, default: int | None) -> int | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not an integer") from None


def _float_env(env: dict, name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise UsageError(f"{name}={raw!r} is not a finite number")
    return value


def _url_prefixes(raw: str | None) -> tuple[str, ...]:
    """``MINER_INPUT_URLS``: URL prefixes such as ``s3://corpora/``, comma- or space-separated."""
    from miner.io.storage import is_url

    parts = [part for part in re.split(r"[,\s]+", raw or "") if part]
    bad = [part for part in parts if not is_url(part)]
    if bad:
        raise UsageError(f"MINER_INPUT_URLS: {bad[0]!r} is not a URL (e.g. s3://corpora/)")
    return tuple(part.rstrip("/") + "/" for part in parts)


def _roots(raw: str | None) -> tuple[Path, ...]:
    """``MINER_INPUT_ROOTS``: absolute folders, symlinks resolved; unset: the current directory."""
    parts = [part for part in (raw or "").split(os.pathsep) if part.strip()]
    if parts:
        return tuple(Path(part.strip()).expanduser().resolve() for part in parts)
    try:
        return (Path.cwd().resolve(),)
    except OSError:  # the current directory was removed: no root
        return ()


DEFAULT_CACHE_LIMIT = 20 * 1024 ** 3


def _artifacts(raw: str | None, home: Path) -> Path | str:
    """``MINER_ARTIFACTS``: an fsspec URL as given (no trailing ``/``), else an absolute folder."""
    if raw and is_url(raw.strip()):
        return raw.strip().rstrip("/")
    return local_path(raw or home / "artifacts").expanduser().absolute()


def _bool_env(env: dict, name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"{name}={env.get(name)!r} is not a boolean (use 1 or 0)")


@dataclasses.dataclass(frozen=True)
class Config:
    """Where things live and how workers run. Build it with :meth:`from_env`."""

    home: Path
    db_url: str
    broker_url: str
    result_backend: str
    artifacts: Path | str  # a local folder, or an fsspec URL (s3://bucket/prefix; miner.io.storage)
    threads: int | None = None  # BLAS/torch/FAISS threads per worker process; None = a share of the host's cores (miner.runtime.cores)
    embed_batch_size: int = 256
    device: str | None = None  # torch device for sentence-transformers models (None = auto)
    stall_seconds: int = 120  # see miner.pipeline.orchestration.sweep
    heartbeat_seconds: float = 3.0  # a running unit renews its lease this often (miner.pipeline.orchestration.leased)
    lease_seconds: float = 15.0  # a lease not renewed for this long is lost (miner.pipeline.orchestration.recover)
    # default of --trust-remote-code for new jobs; each job records its own choice in its options
    trust_remote_code: bool = False
    # where the workers of this machine register to share its cores (miner.runtime.cores)
    cores_dir: Path = dataclasses.field(default_factory=lambda: default_cores_dir())
    # miner serve (miner.faces.api): the bearer token of /api (None: no token), and the folders that jobs
    # submitted over HTTP may read from (default: the current directory)
    api_token: str | None = None
    input_roots: tuple[Path, ...] = dataclasses.field(default_factory=lambda: _roots(None))
    input_urls: tuple[str, ...] = ()  # and the object-store URL prefixes (MINER_INPUT_URLS)
    allowed_hosts: tuple[str, ...] | None = None  # MINER_ALLOWED_HOSTS (None: see miner.faces.api.allowed_hosts)
    api_models: tuple[str, ...] | None = None  # MINER_API_MODELS: the models HTTP jobs may use (None: any)
    # the local copies of remote artifacts (MINER_ARTIFACTS=s3://...): folder and size limit in bytes
    cache: Path | None = None
    cache_limit: int = DEFAULT_CACHE_LIMIT
    # inputs read from standard input or a pipe are copied once (miner.io.reader.spool_input), up to this
    spool_limit: int = 64 * 1024 ** 3

    @classmethod
    def from_env(cls, env: dict | None = None, **overrides) -> "Config":
        """Read ``MINER_*`` variables; keyword overrides (from CLI options) win when not None."""
        env = read_env(env)
        home = Path(overrides.pop("home", None) or env.get("MINER_HOME") or default_home()).expanduser()
        home = home.absolute()
        values = dict(
            home=home,
            db_url=env.get("MINER_DB_URL") or f"sqlite:///{home / 'miner.db'}",
            broker_url=env.get("MINER_BROKER_URL") or broker.url_for(home),
            result_backend=env.get("MINER_RESULT_BACKEND") or f"db+sqlite:///{home / 'results.db'}",
            artifacts=_artifacts(env.get("MINER_ARTIFACTS"), home),
            threads=_int_env(env, "MINER_THREADS", None),
            embed_batch_size=_int_env(env, "MINER_EMBED_BATCH_SIZE", 256),
            device=env.get("MINER_DEVICE") or None,
            stall_seconds=_int_env(env, "MINER_STALL_SECONDS", 120),
            heartbeat_seconds=_float_env(env, "MINER_HEARTBEAT_SECONDS", 3.0),
            lease_seconds=_float_env(env, "MINER_LEASE_SECONDS", 15.0),
            trust_remote_code=_bool_env(env, "MINER_TRUST_REMOTE_CODE", False),
            cores_dir=Path(env.get("MINER_CORES_DIR") or default_cores_dir()).expanduser().absolute(),
            api_token=(env.get("MINER_API_TOKEN") or "").strip() or None,
            input_roots=_roots(env.get("MINER_INPUT_ROOTS")),
            allowed_hosts=tuple(h.strip().lower() for h in env["MINER_ALLOWED_HOSTS"].split(",") if h.strip())
            if env.get("MINER_ALLOWED_HOSTS") else None,
            api_models=tuple(m.strip() for m in env["MINER_API_MODELS"].split(",") if m.strip())
            if env.get("MINER_API_MODELS") else None,
            input_urls=_url_prefixes(env.get("MINER_INPUT_URLS")),
            cache=Path(env.get("MINER_CACHE") or home / "cache").expanduser().absolute(),
            cache_limit=parse_size(env["MINER_CACHE_LIMIT"]) if env.get("MINER_CACHE_LIMIT") else DEFAULT_CACHE_LIMIT,
            spool_limit=parse_size(env["MINER_SPOOL_LIMIT"]) if env.get("MINER_SPOOL_LIMIT") else 64 * 1024 ** 3,
        )
        for key, value in overrides.items():
            if value is not None:
                values[key] = value
        if values["threads"] is not None and values["threads"] < 1:
            raise UsageError("MINER_THREADS must be at least 1")
        if values["stall_seconds"] < 1:
            raise UsageError("MINER_STALL_SECONDS must be at least 1")
        if not values["heartbeat_seconds"] > 0:
            raise UsageError("MINER_HEARTBEAT_SECONDS must be more than 0")
        if values["lease_seconds"] < 2 * values["heartbeat_seconds"]:
            raise UsageError(f"MINER_LEASE_SECONDS ({values['lease_seconds']:g}) must be at least twice "
                             f"MINER_HEARTBEAT_SECONDS ({values['heartbeat_seconds']:g}): a live unit must not look lost")
        return cls(**values)

    @property
    def broker_folder(self) -> Path:
        """Folder of the embedded broker (its Redis data, locks and log) or of the ``filesystem://``
        transport."""
        return self.home / "broker"

    @property
    def log_folder(self) -> Path:
        return self.home / "logs"

    @property
    def is_embedded(self) -> bool:
        """True when the broker needs no server to be started by hand (the embedded Redis server, or
        the filesystem or SQLAlchemy transport)."""
        return broker.is_embedded_url(self.broker_url) or self.broker_url.startswith(
            ("filesystem://", "sqla+", "sqlalchemy+"))

    def ensure_dirs(self) -> None:
        """Create the local folders this configuration points at."""
        self.home.mkdir(parents=True, exist_ok=True)
        if isinstance(self.artifacts, Path):
            self.artifacts.mkdir(parents=True, exist_ok=True)
        self.log_folder.mkdir(parents=True, exist_ok=True)
        if broker.is_embedded_url(self.broker_url):
            self.broker_folder.mkdir(parents=True, exist_ok=True)
        elif self.broker_url.startswith("filesystem://"):
            for sub in ("queue", "processed", "control"):
                (self.broker_folder / sub).mkdir(parents=True, exist_ok=True)
        for url in (self.db_url, self.result_backend):
            path = sqlite_path(url)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)

    def masked(self) -> dict:
        """The configuration as a dict with passwords in URLs (and the API token) replaced by ``***``."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "api_token":
                value = "***" if value else None
            elif field.name == "input_roots":
                value = os.pathsep.join(str(root) for root in value)
            elif field.name in ("input_urls", "allowed_hosts", "api_models"):
                value = ",".join(value) if value is not None else None
            out[field.name] = mask_url(str(value)) if isinstance(value, (str, Path)) else value
        return out


# userinfo: scheme://user:password@host -- the password may hold (unencoded) '@' or '/': it runs to
# the last '@' that is followed by a host (no '@' before the next '/', '?', '#' or the end), without
# crossing into a next URL (Celery's ``a://...;b://...``). When in doubt it hides too much, never a
# part of the password.
_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.\-]*://)(?P<user>[^:/@?#\s]*):(?P<password>(?:(?!://)\S)*)@(?=[^@/?#\s]*(?:[/?#\s]|$))",
    re.I,
)
# query-string parameters (``?a=1&b=2``, also ``;`` separated)
_PARAMETER = re.compile(r"(?P<pre>[?&;])(?P<name>[^=&;#\s]+)=(?P<value>[^&;#\s]*)")
# a parameter holds a secret when its name contains one of these ...
_SECRET_WORDS = ("password", "passwd", "secret", "token", "credential", "apikey", "api_key", "private_key")
# ... or one of its parts (split at ``_``, ``-``, ``.``) is one of these
_SECRET_PARTS = frozenset({"pass", "pwd", "pw", "key", "sig", "signature", "auth", "sas", "session"})


def _secret_name(name: str) -> bool:
    lower = name.lower()
    if any(word in lower for word in _SECRET_WORDS):
        return True
    return any(part in _SECRET_PARTS for part in re.split(r"[_\-.]", lower))


def mask_url(url: str) -> str:
    """Hide the credentials in a URL (or in text holding URLs): the password of the userinfo
    (``redis://:secret@host`` -> ``redis://:***@host``, the user name stays) and the values of
    query-string parameters named like secrets (``password``, ``pass``, ``pwd``, ``secret``,
    ``token``, ``key``, ``access_key``, ``secret_key``, ``sig``, ``X-Amz-Signature``,
    ``sslpassword``, ...: ``?password=x`` -> ``?password=***``)."""
    masked = _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url)
    return _PARAMETER.sub(
        lambda m: f"{m['pre']}{m['name']}=***" if m["value"] and _secret_name(m["name"]) else m[0], masked
    )


def sqlite_path(url: str) -> Path | None:
    """The file behind a ``sqlite:///`` (or ``db+sqlite:///``) URL, else None."""
    for prefix in ("sqlite:///", "db+sqlite:///", "sqla+sqlite:///"):
        if url.startswith(prefix):
            rest = url[len(prefix):]
            if rest in ("", ":memory:"):
                return None
            return Path(rest)
    return None
