"""``miner serve``: the HTTP API (FastAPI) and the dashboard, over the same library calls as the CLI.

JSON API (OpenAPI at ``/docs``):

* ``POST /api/jobs`` -- a body ``{"src", "tgt", "src_lang", "tgt_lang", ...}`` with any option of
  ``miner submit`` by its long name with underscores; ``201`` and the job object (``existing``:
  false), or ``200`` and the job that already mines these files with these options (``existing``:
  true; ``"force": true`` mines again). ``warnings`` lists what ``submit`` would warn about.
* ``GET /api/jobs`` (newest first; ``?state=``, ``?limit=``), ``GET /api/jobs/{id}`` (the object of
  ``miner status ID --json``), ``POST /api/jobs/{id}/cancel``, ``POST /api/jobs/{id}/retry``.
* ``GET /api/jobs/{id}/export?format=tsv|jsonl&min_score=...`` -- streamed, the bytes ``miner
  export`` writes with the same options; ``GET /api/jobs/{id}/report`` (the HTML of ``miner
  report``) and ``/report.png``; ``GET /healthz`` (database and broker reachable).

Errors are ``{"error": "one line"}`` with 400 (bad option or input file), 401 (token), 403 (input
outside ``MINER_INPUT_ROOTS``), 404 (no such job), 409 (not in a state that allows it), 422 (a body
or parameter of the wrong shape), 503 (database or broker unreachable); never a stack trace.

Security: ``MINER_API_TOKEN`` set, every ``/api`` call needs ``Authorization: Bearer TOKEN`` (the
dashboard's pages and their GET calls may use the cookie that ``/login`` sets instead); inputs are
confined to ``MINER_INPUT_ROOTS`` (symlinks resolved). The dashboard pages are in
:mod:`miner.faces.dashboard`.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import sys
import threading
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException

from miner.runtime.config import Config, mask_url
from miner.pipeline.spec import request_fields
from miner.runtime.errors import (InputFileError, InputNotAllowed, JobFailed, JobNotFound, JobStateError, MinerError,
                          ModelError, UsageError)

TOKEN_COOKIE = "miner_token"
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


class ApiError(Exception):
    """An HTTP error with its status and one-line message."""

    def __init__(self, status: int, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def status_code(exc: MinerError) -> int:
    """The HTTP status of a library error (the CLI's exit codes, as HTTP)."""
    if isinstance(exc, InputNotAllowed):
        return 403
    if isinstance(exc, JobNotFound):
        return 404
    if isinstance(exc, JobStateError):
        return 409
    if isinstance(exc, JobFailed):
        return 503  # the job's tasks could not be sent: the broker is down
    if isinstance(exc, (UsageError, InputFileError, ModelError)):
        return 400
    return 500


def one_line(text: str) -> str:
    return (str(text).strip().splitlines() or [""])[0]


# --------------------------------------------------------------------------- request bodies

Threshold = Annotated[float, Field(allow_inf_nan=False)] | Literal["auto"]


#: A job: the options of ``miner submit`` by their long names with underscores, made from the job
#: spec (tests/test_spec.py checks that it and the CLI agree).
JobRequest = create_model("JobRequest", __config__=ConfigDict(extra="forbid"),
                          __doc__="A job: the options of ``miner submit`` by their long names with underscores.",
                          **request_fields(Threshold))


class RetryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    force: bool = False


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def confine(cfg: Config, raw: str) -> Path | str:
    """The input path, symlinks resolved, when it lies under one of ``cfg.input_roots``; a relative
    path is relative to the first root; a URL when it lies under one of ``cfg.input_urls``
    (:func:`confine_url`). :class:`InputNotAllowed` otherwise."""
    if _URL.match(raw):
        return confine_url(cfg, raw)
    if not cfg.input_roots:
        raise InputNotAllowed("no input folder is allowed (MINER_INPUT_ROOTS)")
    path = Path(raw)
    if not path.is_absolute():
        path = cfg.input_roots[0] / path
    real = path.resolve()
    if any(real == root or real.is_relative_to(root) for root in cfg.input_roots):
        return real
    raise InputNotAllowed(f"{raw[:200]} is outside the folders this server reads "
                          f"({', '.join(str(r) for r in cfg.input_roots)}; MINER_INPUT_ROOTS)")


def confine_url(cfg: Config, raw: str) -> str:
    """An object-store input URL, when it lies under one of ``cfg.input_urls`` (no ``..`` segment);
    :class:`InputNotAllowed` otherwise."""
    shown = raw[:200]
    if any(part in (".", "..") for part in raw.split("://", 1)[-1].split("/")):
        raise InputNotAllowed(f"{shown}: a URL with . or .. segments is not read")
    if any(raw.startswith(prefix) for prefix in cfg.input_urls):
        return raw
    allowed = ", ".join(cfg.input_urls) or "none"
    raise InputNotAllowed(f"{shown} is outside the URL prefixes this server reads ({allowed}; MINER_INPUT_URLS)")


def confine_model(cfg: Config, model: str) -> str:
    """A model given as a local directory must lie under the input roots too (its absolute path);
    aliases and Hugging Face ids pass as they are."""
    name = model.strip()
    if name in ("muse", "minilm"):
        return name
    path = Path(name).expanduser()
    if path.is_absolute() or name.startswith((".", "~")) or path.exists():
        return str(confine(cfg, str(path.absolute())))
    return name


# --------------------------------------------------------------------------- the service


class Service:
    """The library calls behind the routes, with one configuration (also used by the dashboard)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._send_lock = threading.Lock()
        self._reports: dict[tuple, tuple[str, bytes, dict]] = {}
        self._report_lock = threading.Lock()

    def submit(self, request: JobRequest) -> tuple[dict, bool]:
        from miner.pipeline.jobs import job_status, prepare_job

        cfg = self.cfg
        options = request.model_dump()
        src, tgt = confine(cfg, options.pop("src")), confine(cfg, options.pop("tgt"))
        options["model"] = confine_model(cfg, options["model"])
        if cfg.api_models is not None and options["model"] not in cfg.api_models and \
                request.model.strip() not in cfg.api_models:
            raise InputNotAllowed(f"model {request.model!r} is not one this server offers (MINER_API_MODELS: "
                                  f"{', '.join(cfg.api_models)})")
        if options.get("trust_remote_code") and not cfg.trust_remote_code:
            raise InputNotAllowed("trust_remote_code lets a model run code in the workers; over HTTP it needs "
                                  "MINER_TRUST_REMOTE_CODE=1 on the server")
        # The server's MINER_TRUST_REMOTE_CODE is a ceiling, not a default: a job that does not ask
        # is not trusted (it was: `false` or no answer lost to the server's setting).
        options["trust_remote_code"] = bool(options.get("trust_remote_code"))
        warnings: list[str] = []
        job_id, existing = prepare_job(cfg, src, tgt, warn=warnings.append, open_db=lambda: cfg, **options)
        if not existing:
            self.send(job_id)
            if not self.ping():
                warnings.append("no worker answered; the job waits in the queue until you start one with "
                                "`miner worker`")
        return {**job_status(cfg, job_id), "existing": existing, "warnings": warnings}, existing

    def send(self, job_id: int) -> None:
        from miner.workers.client import send_or_fail

        with self._send_lock:  # one Celery producer at a time
            send_or_fail(self.cfg, job_id)

    def ping(self) -> list[str]:
        from miner.workers.client import ping

        return ping(self.cfg, 0.5)

    def status(self, job_id: int) -> dict:
        from miner.pipeline.jobs import job_status

        return job_status(self.cfg, job_id)

    def jobs(self, state: str | None, limit: int) -> list[dict]:
        """``miner jobs --json`` rows, each with ``progress`` (0 to 1) and, for live jobs, the stages."""
        from miner.pipeline.jobs import list_jobs

        rows = list_jobs(self.cfg, limit, state)
        for row in rows:
            if row["state"] in ("queued", "running"):
                try:
                    status = self.status(row["id"])
                except JobNotFound:
                    continue
                row["progress"] = progress_fraction(status)
                row["stages"] = status["stages"]
                row["pairs"] = status["pairs"]
            else:
                row["progress"] = 1.0 if row["state"] == "done" else None
        return rows

    def cancel(self, job_id: int) -> dict:
        from miner.pipeline.jobs import cancel_job

        old = cancel_job(self.cfg, job_id)
        return {**self.status(job_id), "previous_state": old}

    def retry(self, job_id: int, force: bool) -> dict:
        from miner.pipeline.jobs import get_job, reset_for_retry

        old = get_job(self.cfg, job_id).state
        reset_for_retry(self.cfg, job_id, force=force)
        self.send(job_id)
        return {**self.status(job_id), "previous_state": old}

    def report(self, job_id: int, per_band: int = 10, seed: int = 0) -> tuple[str, bytes, dict]:
        """``miner report``'s page, PNG and summary; kept while the job's row does not change."""
        from miner.pipeline.jobs import get_job
        from miner.faces.report import render_report

        job = get_job(self.cfg, job_id)
        key = (job_id, job.attempt, str(job.finished_at), per_band, seed)
        with self._report_lock:
            if key in self._reports:
                return self._reports[key]
        rendered = render_report(self.cfg, job_id, per_band=per_band, seed=seed)
        with self._report_lock:
            if len(self._reports) > 16:
                self._reports.clear()
            self._reports[key] = rendered
        return rendered

    def health(self) -> tuple[bool, dict]:
        from sqlalchemy import text

        from miner.runtime.db import session_scope
        from miner.workers.client import broker_problem

        out = {"database": "ok", "broker": "ok"}
        try:
            with session_scope(self.cfg.db_url) as s:
                s.execute(text("SELECT 1"))
        except Exception as exc:  # any failure: not reachable
            out["database"] = f"cannot reach the database at {mask_url(self.cfg.db_url)}: {one_line(exc)}"
        problem = broker_problem(self.cfg)
        if problem:
            out["broker"] = problem
        return out["database"] == "ok" and out["broker"] == "ok", out


def progress_fraction(status: dict) -> float:
    """0 to 1: the mean over the stages of their finished share of units (unknown totals count 0)."""
    if status["state"] == "done":
        return 1.0
    shares = [min(1.0, s["done"] / s["total"]) if s.get("total") else 0.0 for s in status["stages"]]
    return round(sum(shares) / max(len(shares), 1), 4)


# --------------------------------------------------------------------------- the app


def _authorised(cfg: Config, request: Request) -> bool:
    if not cfg.api_token:
        return True
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), cfg.api_token.encode()):
        return True
    cookie = request.cookies.get(TOKEN_COOKIE, "")
    # The dashboard's cookie only reads: a page of another site cannot make the browser change a job.
    return request.method in ("GET", "HEAD") and hmac.compare_digest(cookie.encode(), cfg.api_token.encode())


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def allowed_hosts(cfg: Config, bound: str | None = None) -> tuple[str, ...] | None:
    """The host names a request's Host header may carry: ``MINER_ALLOWED_HOSTS``, else the loopback
    names and the address ``serve`` binds; None (any) when a token guards the API and no list is
    given. A page of another site that rebinds its own name to 127.0.0.1 (DNS rebinding) sends its
    own name as the Host, so it is refused on a loopback server without a token."""
    if cfg.allowed_hosts is not None:
        return cfg.allowed_hosts
    if cfg.api_token:
        return None
    extra = () if bound in (None, "", "0.0.0.0", "::") else (bound.strip("[]").lower(),)
    return LOOPBACK_NAMES + extra


def _host_name(value: str) -> str:
    """``example.org:8000`` -> ``example.org``, ``[::1]:8000`` -> ``::1``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class RequestGuard:
    """ASGI middleware in front of every route.

    * The Host header must name an allowed host (:func:`allowed_hosts`): 400 otherwise.
    * A request that changes something (POST, PUT, PATCH, DELETE under ``/api/``) must come from
      this origin (an ``Origin`` or ``Sec-Fetch-Site`` header of another site: 403) and carry
      ``Content-Type: application/json``, even with an empty body (415): what an HTML form or a
      plain ``fetch`` of another site can send (``text/plain``, form encoding) is refused, so a page
      elsewhere cannot submit or cancel a job through a browser on this machine. ``curl`` needs
      ``-H 'Content-Type: application/json'`` with ``-d``.
    """

    CHANGING = ("POST", "PUT", "PATCH", "DELETE")

    def __init__(self, app, hosts: tuple[str, ...] | None) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            problem = self.problem(scope)
            if problem is not None:
                status, message = problem
                response = JSONResponse({"error": message}, status_code=status)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def problem(self, scope) -> tuple[int, str] | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = _host_name(headers.get("host", ""))
        if self.hosts is not None and host not in self.hosts:
            return 400, (f"Host {host or '(none)'!r} is not served here (allowed: {', '.join(self.hosts)}; "
                         f"MINER_ALLOWED_HOSTS adds names)")
        if scope["method"] not in self.CHANGING or not scope["path"].startswith("/api/"):
            return None
        origin = headers.get("origin")
        if origin is not None:
            origin_host = _host_name(origin.split("://", 1)[-1].split("/", 1)[0])
            if origin == "null" or origin_host != host:
                return 403, f"cross-origin request refused (Origin {origin}); call the API from this origin"
        if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return 403, "cross-site request refused (Sec-Fetch-Site); call the API from this origin"
        media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media != "application/json":
            return 415, ("send the body as JSON with 'Content-Type: application/json' (curl: -H 'Content-Type: "
                         "application/json' -d '{...}'; with no body too, e.g. for cancel)")
        return None


def _validation_message(exc: RequestValidationError) -> tuple[int, str]:
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return 400, f"the body is not valid JSON: {one_line(first.get('ctx', {}).get('error', '')) or 'parse error'}"
    if first.get("type") in ("model_attributes_type", "dict_type") and list(first.get("loc", ())) == ["body"]:
        return 422, "the body must be a JSON object such as {\"src\": ..., \"tgt\": ..., \"src_lang\": ..., \"tgt_lang\": ...}"
    parts = []
    for error in errors[:3]:
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        where = ".".join(loc)
        message = one_line(error.get("msg", "invalid"))
        if error.get("type") == "extra_forbidden":
            message = "unknown option"
        parts.append(f"{where}: {message}" if where else message)
    # A value outside its range or choices is a bad option (400, as `miner submit` exits 2 for it);
    # a body or parameter of the wrong shape (a missing field, a wrong type, an unknown key) is 422.
    status = 400 if errors and all(e.get("type") in _BAD_VALUE for e in errors) else 422
    return status, "; ".join(parts) or "invalid request"


#: pydantic error types of a value that has the right type but is not allowed.
_BAD_VALUE = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "multiple_of", "literal_error",
              "enum", "string_too_short", "string_too_long", "too_short", "too_long", "finite_number"}


def create_app(cfg: Config, bound: str | None = None) -> FastAPI:
    """The FastAPI application of ``miner serve`` for this configuration."""
    from miner.faces import dashboard

    service = Service(cfg)
    app = FastAPI(title="bitext-miner", version=_version(),
                  description="Mine translated sentence pairs: submit jobs, follow them, export the pairs.")
    app.state.service = service
    app.add_middleware(RequestGuard, hosts=allowed_hosts(cfg, bound))

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return error(exc.status, exc.message, exc.headers)

    @app.exception_handler(MinerError)
    async def _miner_error(request, exc: MinerError):
        return error(status_code(exc), one_line(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request, exc: RequestValidationError):
        return error(*_validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        return error(exc.status_code, one_line(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _other(request, exc: Exception):
        from miner.runtime.dbapi import is_database_error
        from miner.workers.client import is_broker_error

        if is_database_error(exc):
            return error(503, f"database error at {mask_url(cfg.db_url)}: {one_line(getattr(exc, 'orig', exc) or exc)}")
        if is_broker_error(exc):
            return error(503, f"cannot reach the broker at {mask_url(cfg.broker_url)}: {one_line(exc)}")
        # The details go to the server's log under an id; the client gets the id only (the type and
        # message of an internal error can show paths, SQL or configuration to whoever asks).
        import traceback
        import uuid

        request_id = uuid.uuid4().hex[:12]
        detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        print(f"miner serve: request {request_id}: {request.method} {request.url.path}: internal error\n{detail}",
              file=sys.stderr, flush=True)
        response = error(500, f"internal error (request {request_id}); the server's log has the details")
        response.headers["X-Request-ID"] = request_id
        return response

    def require_token(request: Request) -> None:
        if not _authorised(cfg, request):
            raise ApiError(401, "missing or wrong token: send 'Authorization: Bearer TOKEN' (MINER_API_TOKEN)",
                           {"WWW-Authenticate": "Bearer"})

    api = APIRouter(prefix="/api", dependencies=[Depends(require_token)])

    @api.post("/jobs", status_code=201, summary="Submit a job (as `miner submit`)")
    def submit_job(request: JobRequest, response: Response) -> dict:
        job, existing = service.submit(request)
        if existing:
            response.status_code = 200
        return job

    @api.get("/jobs", summary="Jobs, newest first")
    def list_jobs(state: Literal["queued", "running", "done", "failed", "cancelled"] | None = None,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict]:
        return service.jobs(state, limit)

    @api.get("/jobs/{job_id}", summary="A job's state and progress (as `miner status ID --json`)")
    def get_job(job_id: int) -> dict:
        return service.status(job_id)

    @api.post("/jobs/{job_id}/cancel", summary="Cancel a job (as `miner cancel`)")
    def cancel_job(job_id: int) -> dict:
        return service.cancel(job_id)

    @api.post("/jobs/{job_id}/retry", summary="Run a job again (as `miner retry`; finished shards are kept)")
    def retry_job(job_id: int, request: Annotated[RetryRequest | None, Body()] = None) -> dict:
        return service.retry(job_id, bool(request and request.force))

    @api.get("/jobs/{job_id}/export", summary="The job's pairs, streamed (as `miner export -o -`)",
             response_class=StreamingResponse)
    def export_job(
        job_id: int,
        format: Literal["tsv", "jsonl", "moses"] = "tsv",
        min_score: float | None = None,
        max_score: float | None = None,
        min_length: Annotated[int | None, Query(ge=0)] = None,
        max_length: Annotated[int | None, Query(ge=0)] = None,
        max_length_ratio: Annotated[float | None, Query(ge=1)] = None,
        drop_identical: bool = False,
        drop_digit_mismatch: bool = False,
        dedup: bool = False,
        langid: bool = False,
        langid_min_share: Annotated[float, Query(gt=0, le=1)] = 0.25,
        min_probability: Annotated[float | None, Query(ge=0, le=1)] = None,
        header: bool = False,
        with_probability: bool = False,
        with_ids: bool = False,
    ):
        from miner.io.export import stream_export
        from miner.io.filters import FilterOptions

        if format == "moses":
            raise ApiError(400, "--format moses writes two files; export tsv or jsonl over HTTP")
        filters = FilterOptions(min_score=min_score, max_score=max_score, min_probability=min_probability,
                                min_length=min_length, max_length=max_length, max_length_ratio=max_length_ratio,
                                drop_identical=drop_identical, drop_digit_mismatch=drop_digit_mismatch,
                                langid=langid, langid_min_share=langid_min_share, dedup=dedup)
        _, chunks = stream_export(cfg, job_id, fmt=format, header=header, filters=filters,
                                  with_probability=with_probability, with_ids=with_ids)
        media = "text/tab-separated-values" if format == "tsv" else "application/x-ndjson"
        return StreamingResponse(chunks, media_type=f"{media}; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="job-{job_id}.{format}"'})

    @api.get("/jobs/{job_id}/report", summary="The HTML report (as `miner report`)", response_class=HTMLResponse)
    def report(job_id: int, per_band: Annotated[int, Query(ge=0, le=1000)] = 10, seed: int = 0):
        page, _, _ = service.report(job_id, per_band, seed)
        return HTMLResponse(page, headers={"Content-Security-Policy": REPORT_CSP})

    @api.get("/jobs/{job_id}/report.png", summary="The report's picture: score histogram with the threshold",
             response_class=Response)
    def report_png(job_id: int):
        _, png, _ = service.report(job_id)
        return Response(png, media_type="image/png")

    app.include_router(api)

    @app.get("/healthz", summary="Database and broker reachable")
    def healthz():
        ok, parts = service.health()
        return JSONResponse(parts if ok else {"error": parts["database"] if parts["database"] != "ok"
                                              else parts["broker"], **parts}, status_code=200 if ok else 503)

    dashboard.add_routes(app, service, authorised=lambda request: _authorised(cfg, request))
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bitext-miner")
    except PackageNotFoundError:
        return "0"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(cfg: Config, host: str) -> None:
    """A server reachable from other machines needs a token."""
    if not is_loopback(host) and not cfg.api_token:
        raise UsageError(f"--host {host} is reachable from other machines; set MINER_API_TOKEN first (every /api "
                         "call then needs 'Authorization: Bearer TOKEN'), or bind to 127.0.0.1")


def serve(cfg: Config, host: str, port: int, log) -> None:
    """Run the server until interrupted (uvicorn); ``log(line)`` prints the address."""
    import uvicorn

    import socket

    check_bind(cfg, host)
    try:  # one clear line instead of uvicorn's log when the port is taken
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host.strip("[]"), port))
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    app = create_app(cfg, bound=host)
    shown = f"[{host}]" if ":" in host else host
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    roots = ", ".join(str(r) for r in cfg.input_roots)
    log(f"serving on http://{shown}:{port} (dashboard /, API /api, docs /docs); inputs under {roots}; "
        f"{'token required' if cfg.api_token else 'no token (MINER_API_TOKEN unset)'}")
    server.run()
