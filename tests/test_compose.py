"""The deployment files (Dockerfile, docker-compose.yml, .dockerignore) checked against the code.

No Docker and no servers: the compose file is parsed with PyYAML, ``${VAR:-default}`` interpolated
like ``docker compose`` does, and the result fed to the real :class:`miner.runtime.config.Config` and the
real click commands of :mod:`miner.faces.cli`.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import click
import pytest

yaml = pytest.importorskip("yaml")

from miner.faces.cli import main
from miner.runtime.config import DEFAULT_QUEUE, EMBED_QUEUE, ENV_VARS, SECRET_VARS, Config

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

MINER_SERVICES = ("migrate", "worker", "miner")
# Values unlike the defaults, to catch a value written twice instead of interpolated from one variable.
CUSTOM_ENV = {"POSTGRES_USER": "alice", "POSTGRES_PASSWORD": "s3cret", "POSTGRES_DB": "bitext",
              "MINER_WORKER_CONCURRENCY": "7"}


# --------------------------------------------------------------------------- helpers

_VAR = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
                  r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(text: str, env: dict, missing: list | None = None) -> str:
    """Compose's variable substitution: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-d}``, ``${VAR-d}``,
    ``${VAR:?err}``, ``${VAR?err}``, ``${VAR:+alt}``, ``${VAR+alt}``. ``missing`` collects the
    variables that had to be read but have neither a value nor a default."""

    def sub(m: re.Match) -> str:
        if m["escaped"]:
            return "$"
        name = m["braced"] or m["bare"]
        op, arg = m["op"], m["arg"] or ""
        value = env.get(name)
        unset_or_empty = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if unset_or_empty else value
        if op in (":+", "+"):
            return "" if unset_or_empty else arg
        if op in (":?", "?"):
            if unset_or_empty:
                raise ValueError(f"{name}: {arg}")
            return value
        if value is None and missing is not None:
            missing.append(name)
        return value or ""

    return _VAR.sub(sub, text)


def _walk(value, env, missing):
    if isinstance(value, str):
        return interpolate(value, env, missing)
    if isinstance(value, list):
        return [_walk(v, env, missing) for v in value]
    if isinstance(value, dict):
        return {k: _walk(v, env, missing) for k, v in value.items()}
    return value


def load_compose(env: dict | None = None, missing: list | None = None) -> dict:
    """docker-compose.yml as compose sees it (anchors and ``<<`` merges resolved, values interpolated)."""
    raw = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return _walk(raw, env or {}, missing)


def service_env(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of each volume of a service, short or long syntax."""
    out = []
    for vol in service.get("volumes") or []:
        if isinstance(vol, dict):
            out.append((vol.get("source", ""), vol["target"]))
        else:
            parts = vol.split(":")
            out.append((parts[0], parts[1]) if len(parts) > 1 else ("", parts[0]))
    return out


def is_named_volume(source: str) -> bool:
    return bool(source) and not source.startswith((".", "/", "~", "$"))


def argv(value) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def parse_cli(args: list[str]) -> click.Context:
    """Parse ``miner ARGS`` with the real click commands (nothing runs); returns the leaf context.
    Unknown commands or options, or bad values, raise click.UsageError."""
    cmd, ctx, rest = main, None, list(args)
    name = "miner"
    while isinstance(cmd, click.Group):
        ctx = click.Context(cmd, info_name=name, parent=ctx)
        name, cmd, rest = cmd.resolve_command(ctx, rest)
    return cmd.make_context(name, rest, parent=ctx)


def miner_config(compose: dict, service: str) -> Config:
    return Config.from_env(service_env(compose["services"][service]))


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, current = [], ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, rest = current.partition(" ")
        out.append((keyword.upper(), rest.strip()))
        current = ""
    return out


def exec_form(arguments: str) -> list[str]:
    return json.loads(arguments) if arguments.startswith("[") else ["/bin/sh", "-c", arguments]


def pyproject_pin(package: str) -> str:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    pins = [d for d in deps if re.match(rf"{package}\s*==", d)]
    assert len(pins) == 1, f"pyproject.toml should pin {package} exactly once: {deps}"
    return pins[0].split("==", 1)[1].strip()


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins, ``!`` re-includes; a pattern matching a folder
    excludes what is under it; ``**/`` matches any depth (including none)."""
    excluded = False
    parents = [str(p) for p in reversed(PurePosixPath(path).parents) if str(p) != "."] + [path]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        candidates = [pat, pat[3:]] if pat.startswith("**/") else [pat]
        if any(fnmatch.fnmatchcase(p, c) for p in parents for c in candidates):
            excluded = not negate
    return excluded


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


# --------------------------------------------------------------------------- the interpolation helper


def test_interpolate_like_compose():
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("${SET:-d} ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} $SET $$SET", env) == "v d d  v $SET"
    assert interpolate("${SET:+alt}|${UNSET:+alt}", env) == "alt|"
    missing = []
    assert interpolate("a${NOPE}b", env, missing) == "ab" and missing == ["NOPE"]
    with pytest.raises(ValueError):
        interpolate("${UNSET:?required}", env)


# --------------------------------------------------------------------------- compose file


def test_every_variable_has_a_default():
    """`docker compose up` must work without a .env file."""
    missing = []
    load_compose({}, missing)
    assert missing == []


def test_required_services_and_images(compose):
    services = compose["services"]
    for name in ("redis", "postgres", "migrate", "worker", "miner"):
        assert name in services, f"service {name} missing"
    assert services["redis"]["image"].split(":")[0] == "redis"
    assert services["postgres"]["image"].split(":")[0] == "postgres"
    assert "redis-cli" in argv(services["redis"]["healthcheck"]["test"])
    assert "ping" in argv(services["redis"]["healthcheck"]["test"])
    assert "pg_isready" in " ".join(argv(services["postgres"]["healthcheck"]["test"]))
    for name in ("migrate", "worker"):
        build = services[name]["build"]
        assert (build if isinstance(build, str) else build.get("context", ".")) in (".", "./")


@pytest.mark.parametrize("name", MINER_SERVICES)
def test_miner_env_names_exist(compose, name):
    env = service_env(compose["services"][name])
    known = set(ENV_VARS) | {f"{var}_FILE" for var in SECRET_VARS}
    unknown = sorted(k for k in env if k.startswith("MINER_") and k not in known)
    assert unknown == [], f"{name}: variables miner.runtime.config does not read: {unknown}"
    for key in ("MINER_DB_URL", "MINER_BROKER_URL", "MINER_ARTIFACTS"):
        assert key in env or f"{key}_FILE" in env, f"{name}: {key} not set"


def test_miner_services_share_one_configuration(compose):
    envs = {name: service_env(compose["services"][name]) for name in MINER_SERVICES}
    assert envs["worker"] == envs["migrate"] == envs["miner"]


@pytest.mark.parametrize("env", [{}, CUSTOM_ENV], ids=["defaults", "custom"])
def test_database_url_matches_postgres_service(env):
    from sqlalchemy.engine import make_url

    compose = load_compose(env)
    pg = service_env(compose["services"]["postgres"])
    for name in MINER_SERVICES:
        url = make_url(miner_config(compose, name).db_url)
        assert url.drivername == "postgresql+psycopg"
        assert url.host == "postgres" and url.host in compose["services"]
        assert (url.port or 5432) == 5432
        assert url.username == pg["POSTGRES_USER"]
        assert url.password == pg["POSTGRES_PASSWORD"]
        assert url.database == pg["POSTGRES_DB"]
    if env:
        assert pg["POSTGRES_PASSWORD"] == env["POSTGRES_PASSWORD"]


def test_broker_and_results_on_the_redis_service(compose):
    for name in MINER_SERVICES:
        cfg = miner_config(compose, name)
        for url in (cfg.broker_url, cfg.result_backend):
            parts = urlsplit(url)
            assert parts.scheme == "redis", url
            assert parts.hostname == "redis" and parts.hostname in compose["services"]
            assert (parts.port or 6379) == 6379
        assert not cfg.is_embedded
        assert urlsplit(cfg.broker_url).path != urlsplit(cfg.result_backend).path, "broker and results share a db"


def test_artifacts_on_one_shared_named_volume(compose):
    sources = set()
    for name in MINER_SERVICES:
        service = compose["services"][name]
        artifacts = str(miner_config(compose, name).artifacts)
        hits = [src for src, target in mounts(service) if target.rstrip("/") == artifacts]
        assert hits, f"{name}: MINER_ARTIFACTS={artifacts} is not a mount target"
        assert all(is_named_volume(src) for src in hits), f"{name}: artifacts not on a named volume: {hits}"
        sources.update(hits)
    assert len(sources) == 1, f"services use different artifacts volumes: {sources}"


def test_input_folder_at_the_same_path_for_cli_and_workers(compose):
    """Jobs store absolute input paths (miner.pipeline.jobs) that the workers open."""
    data = {name: {t: s for s, t in mounts(compose["services"][name])}.get("/data") for name in ("worker", "miner")}
    assert data["worker"] and data["worker"] == data["miner"]


def test_named_volumes_declared(compose):
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for src, _ in mounts(service):
            if is_named_volume(src):
                assert src in declared, f"{name}: volume {src} not declared"
    assert {"artifacts", "pgdata"} <= declared
    assert any(src == "pgdata" for src, _ in mounts(compose["services"]["postgres"]))


@pytest.mark.parametrize("env", [{}, CUSTOM_ENV], ids=["defaults", "custom"])
def test_worker_command_parses_with_the_real_cli(env):
    compose = load_compose(env)
    service = compose["services"]["worker"]
    assert "entrypoint" not in service, "the worker command is the whole argv (the image has no ENTRYPOINT)"
    args = argv(service["command"])
    assert args[0] == "miner"
    ctx = parse_cli(args[1:])
    assert ctx.command_path == "miner worker"
    assert ctx.params["concurrency"] == int(env.get("MINER_WORKER_CONCURRENCY", 2))
    queues = ctx.params["queues"].split(",")
    assert DEFAULT_QUEUE in queues and EMBED_QUEUE in queues


def test_parse_cli_rejects_unknown_flags():
    """The check above can fail: a flag `miner worker` lacks is an error."""
    with pytest.raises(click.UsageError):
        parse_cli(["worker", "--no-such-flag"])
    with pytest.raises(click.UsageError):
        parse_cli(["no-such-command"])


def test_worker_is_scalable(compose):
    worker = compose["services"]["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert "hostname" not in worker, "replicas would share one Celery node name"


def test_migrate_is_one_shot_db_upgrade(compose):
    migrate = compose["services"]["migrate"]
    args = argv(migrate["command"])
    assert args[0] == "miner"
    assert parse_cli(args[1:]).command_path == "miner db upgrade"
    assert str(migrate.get("restart")) == "no"


def test_cli_service(compose):
    cli = compose["services"]["miner"]
    assert "cli" in cli["profiles"]
    assert argv(cli["entrypoint"]) == ["miner"]
    assert "container_name" not in cli and "ports" not in cli
    parse_cli(["submit", "/data/a.de", "/data/b.en", "--src-lang", "de", "--tgt-lang", "en"])


DEPENDENCIES = {
    "migrate": {"postgres": "service_healthy"},
    "worker": {"redis": "service_healthy", "postgres": "service_healthy",
               "migrate": "service_completed_successfully"},
    "miner": {"redis": "service_healthy", "postgres": "service_healthy",
              "migrate": "service_completed_successfully"},
    "api": {"redis": "service_healthy", "postgres": "service_healthy",
            "migrate": "service_completed_successfully"},
}


@pytest.mark.parametrize("name", sorted(DEPENDENCIES))
def test_depends_on_conditions(compose, name):
    depends = compose["services"][name]["depends_on"]
    assert isinstance(depends, dict), "use the long syntax with conditions"
    got = {dep: spec.get("condition") for dep, spec in depends.items()}
    assert got == DEPENDENCIES[name]
    for dep, condition in got.items():
        if condition == "service_healthy":
            assert "healthcheck" in compose["services"][dep], f"{dep} has no healthcheck"


@pytest.mark.parametrize("env", [{}, {**CUSTOM_ENV, "MINER_API_TOKEN": "t", "MINER_API_PORT": "9001"}],
                         ids=["defaults", "custom"])
def test_api_service(env):
    """`miner serve` in a container: the real CLI parses its command, the port it listens on is the one
    published (on the host's loopback only), it shares the workers' configuration plus its token and
    input folder, and that folder is the /data mount the workers read jobs from."""
    from miner.faces.api import is_loopback

    compose = load_compose(env)
    api = compose["services"]["api"]
    assert "api" in api["profiles"]
    ctx = parse_cli(argv(api["command"])[1:])
    assert ctx.command_path == "miner serve"
    host, port = ctx.params["host"], ctx.params["port"]
    assert not is_loopback(host), "inside a container, a loopback address cannot be reached through the port"
    published = [p.rsplit(":", 2) for p in api["ports"]]
    assert published == [["127.0.0.1", env.get("MINER_API_PORT", "8000"), str(port)]]
    api_env = service_env(api)
    assert api_env.get("MINER_API_TOKEN", None) == env.get("MINER_API_TOKEN", "")
    cfg, worker = miner_config(compose, "api"), miner_config(compose, "worker")
    assert (cfg.db_url, cfg.broker_url, cfg.result_backend, cfg.artifacts) == \
        (worker.db_url, worker.broker_url, worker.result_backend, worker.artifacts)
    assert {k: v for k, v in api_env.items() if k not in ("MINER_API_TOKEN", "MINER_INPUT_ROOTS")} == \
        service_env(compose["services"]["worker"])
    assert [str(root) for root in cfg.input_roots] == ["/data"]
    data = {t: s for s, t in mounts(api)}.get("/data")
    assert data and data == {t: s for s, t in mounts(compose["services"]["worker"])}.get("/data")
    known = set(ENV_VARS) | {f"{var}_FILE" for var in SECRET_VARS}
    assert sorted(k for k in api_env if k.startswith("MINER_") and k not in known) == []


def test_flower_watches_the_same_broker(compose):
    flower = compose["services"].get("flower")
    if flower is None:
        pytest.skip("no flower service")
    assert "monitoring" in flower["profiles"]
    broker = [a.split("=", 1)[1] for a in argv(flower["command"]) if a.startswith("--broker=")]
    assert broker == [miner_config(compose, "worker").broker_url]
    worker = parse_cli(argv(compose["services"]["worker"]["command"])[1:])
    assert worker.params["events"] is True, "Flower shows tasks only when workers send task events"


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_default_command_is_a_worker():
    instructions = dockerfile_instructions()
    assert instructions[0][0] == "FROM" and instructions[0][1].startswith("python:3.11-slim")
    assert not [args for kw, args in instructions if kw == "ENTRYPOINT"]
    cmd = exec_form([args for kw, args in instructions if kw == "CMD"][-1])
    assert cmd[0] == "miner"
    assert parse_cli(cmd[1:]).command_path == "miner worker"


def test_dockerfile_runs_as_non_root():
    users = [args for kw, args in dockerfile_instructions() if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")


def test_dockerfile_torch_pin_matches_pyproject():
    pin = pyproject_pin("torch")
    runs = " ".join(args for kw, args in dockerfile_instructions() if kw == "RUN")
    assert re.findall(r"torch==([\w.+]+)", runs) == [pin]
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for kw, a in dockerfile_instructions() if kw == "ARG" and "=" in a}
    assert args.get("TORCH_INDEX_URL") == "https://download.pytorch.org/whl/cpu"
    for run in (args for kw, args in dockerfile_instructions() if kw == "RUN"):
        if "pip install" in run:
            assert "--extra-index-url" in run, f"a pip install without the torch index: {run}"


def test_dockerfile_copies_the_project():
    copied = set()
    for kw, args in dockerfile_instructions():
        if kw == "COPY":
            copied.update(p.rstrip("/") for p in args.split()[:-1] if not p.startswith("--"))
    for path in ("miner", "workers", "migrations", "alembic.ini", "pyproject.toml", "README.md", "examples"):
        assert path in copied, f"Dockerfile does not copy {path}"
    patterns = [line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")]
    for path in sorted(copied):
        files = [path] if (ROOT / path).is_file() else [
            str(f.relative_to(ROOT)) for f in (ROOT / path).rglob("*")
            if f.is_file() and "__pycache__" not in f.parts]
        assert files, f"{path} is missing from the repository"
        kept = [f for f in files if not dockerignored(f, patterns)]
        assert kept, f".dockerignore excludes everything in {path}"
        if path == "examples":
            assert "examples/gold.tsv" in kept
    for junk in (".git/config", ".miner/miner.db", "miner/__pycache__/cli.cpython-311.pyc", "out.tsv",
                 ".hypothesis/examples/x", "tests/test_cli.py"):
        assert dockerignored(junk, patterns), f"{junk} would be sent to the build"


# --------------------------------------------------------------------------- profile s3 (issue 14)

S3_SERVICES = ("worker-s3", "miner-s3")


@pytest.mark.parametrize("env", [{}, {**CUSTOM_ENV, "MINIO_ROOT_USER": "bob", "MINIO_ROOT_PASSWORD": "m1n10-pw",
                                      "MINER_BUCKET": "corpora"}], ids=["defaults", "custom"])
def test_s3_profile_workers_share_no_volume(env):
    """Profile s3: MinIO, a one-shot bucket service, workers whose artifacts are in that bucket on that
    endpoint with MinIO's own credentials, and no volume or folder shared for artifacts or inputs."""
    from miner.io.storage import AWS_VARS

    compose = load_compose(env)
    services = compose["services"]
    minio, bucket = services["minio"], services["bucket"]
    assert "s3" in minio["profiles"] and minio["image"].split(":")[0] == "minio/minio"
    assert "healthcheck" in minio
    assert "--address" in argv(minio["command"]) and argv(minio["command"])[argv(minio["command"]).index("--address") + 1] == ":9000"
    assert "ports" not in minio, "MinIO publishes no host port"
    creds = service_env(minio)
    made = argv(bucket["entrypoint"])
    assert made[:3] == ["mc", "mb", "--ignore-existing"]
    made_bucket = made[3].split("/", 1)[1]
    mc_url = urlsplit(service_env(bucket)["MC_HOST_s3"])
    assert (mc_url.hostname, mc_url.port, mc_url.username, mc_url.password) == \
        ("minio", 9000, creds["MINIO_ROOT_USER"], creds["MINIO_ROOT_PASSWORD"])
    worker_cli = parse_cli(argv(services["worker"]["command"])[1:]).params
    for name in S3_SERVICES:
        service = services[name]
        assert "s3" in service["profiles"]
        senv = service_env(service)
        known = set(ENV_VARS) | {f"{var}_FILE" for var in SECRET_VARS}
        assert sorted(k for k in senv if k.startswith("MINER_") and k not in known) == []
        assert sorted(k for k in senv if k.startswith("AWS_") and k not in AWS_VARS) == []
        cfg = miner_config(compose, name)
        assert isinstance(cfg.artifacts, str) and cfg.artifacts.startswith(f"s3://{made_bucket}/")
        assert made_bucket == env.get("MINER_BUCKET", "miner")
        endpoint = urlsplit(senv["AWS_ENDPOINT_URL"])
        assert (endpoint.hostname, endpoint.port) == ("minio", 9000) and endpoint.hostname in services
        assert (senv["AWS_ACCESS_KEY_ID"], senv["AWS_SECRET_ACCESS_KEY"]) == \
            (creds["MINIO_ROOT_USER"], creds["MINIO_ROOT_PASSWORD"])
        # the same database and broker as the other services
        other = miner_config(compose, "worker")
        assert (cfg.db_url, cfg.broker_url, cfg.result_backend) == (other.db_url, other.broker_url, other.result_backend)
        assert services[name]["depends_on"]["bucket"]["condition"] == "service_completed_successfully"
    worker = services["worker-s3"]
    assert [target for _src, target in mounts(worker)] == ["/run/miner-cores"], "an S3 worker shares no data volume"
    assert "container_name" not in worker and "ports" not in worker and "hostname" not in worker
    ctx = parse_cli(argv(worker["command"])[1:])
    assert ctx.command_path == "miner worker" and ctx.params == worker_cli
    cli = services["miner-s3"]
    assert argv(cli["entrypoint"]) == ["miner"]
    parse_cli(["submit", "s3://miner/inputs/a.de", "s3://miner/inputs/b.en", "--src-lang", "de", "--tgt-lang", "en"])


def test_s3_profile_secret_masked_by_miner_config(monkeypatch):
    """`miner config` in the s3 services shows the endpoint but never the secret key."""
    from click.testing import CliRunner

    compose = load_compose({"MINIO_ROOT_PASSWORD": "very-secret-pw"})
    senv = service_env(compose["services"]["worker-s3"])
    for key, value in senv.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MINER_HOME", "/nonexistent-home")
    result = CliRunner().invoke(main, ["config"])
    assert result.exit_code == 0, result.output
    assert "very-secret-pw" not in result.output and "aws_secret_access_key: ***" in result.output
    assert "artifacts: s3://miner/artifacts" in result.output and "aws_endpoint_url: http://minio:9000" in result.output
