"""The ``miner`` command line: parses options, calls the library, formats results.

Exit codes: 0 success; 1 a job failed or another runtime error; 2 bad options or arguments
(unknown option, k < 1, missing job, ...); 3 bad input file (missing, empty, unreadable, not
text); 4 a model that cannot be resolved or loaded; 130 interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from miner import defaults
from miner.config import DEFAULT_QUEUE, EMBED_QUEUE, Config, available_cores, mask_url
from miner.errors import JobFailed, MinerError, OutputClosed, UsageError

FINISHED = ("done", "failed", "cancelled")


def warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


class MinerGroup(click.Group):
    """Turns library errors into one ``Error: ...`` line and the error's exit code, in one place."""

    def invoke(self, ctx: click.Context):
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return super().invoke(ctx)
        except OutputClosed:
            _quiet_exit(ctx)
        except MinerError as exc:
            error = click.ClickException(str(exc))
            error.exit_code = exc.exit_code
            raise error from None
        except SQLAlchemyError as exc:
            cfg = ctx.obj.get("config") if isinstance(ctx.obj, dict) else None
            where = f" at {mask_url(cfg.db_url)}" if cfg else ""
            detail = str(getattr(exc, "orig", exc) or exc).splitlines()[0]
            raise click.ClickException(f"database error{where}: {detail}") from None
        except OSError as exc:
            if isinstance(exc, BrokenPipeError) and _stdout_gone():
                _quiet_exit(ctx)  # e.g. `miner jobs | head`: click.echo met a closed pipe
            if exc.filename is None:
                raise
            where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
            raise click.ClickException(
                f"cannot use {where}: {exc.strerror or exc}; check the path, its permissions and free space"
            ) from None
        except Exception as exc:
            from kombu.exceptions import OperationalError as BrokerError

            if not isinstance(exc, BrokerError):
                raise
            cfg = ctx.obj.get("config") if isinstance(ctx.obj, dict) else None
            where = f" at {mask_url(cfg.broker_url)}" if cfg else ""
            raise click.ClickException(
                f"cannot reach the broker{where}: {str(exc).splitlines()[0]}; check MINER_BROKER_URL "
                "and that the server runs"
            ) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


def _stdout_gone() -> bool:
    """Whether standard output is a pipe whose reader has gone."""
    import select

    try:
        fd = sys.stdout.fileno()
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        events = poll.poll(0)
    except (AttributeError, ValueError, OSError):  # not a real file (CliRunner), or no poll
        return False
    return any(event & select.POLLERR for _, event in events)


def _quiet_exit(ctx: click.Context):
    """End with status 0 and no message: the reader of standard output went away (``| head``), as
    Unix tools do. Standard output is pointed at /dev/null first, so that the interpreter's final
    flush of what is still buffered does not complain either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, ValueError, OSError):
        pass
    ctx.exit(0)


def _config(ctx: click.Context) -> Config:
    return ctx.ensure_object(dict).setdefault("config", Config.from_env())


def _db(ctx: click.Context) -> Config:
    """The configuration, with the database schema brought up to date (first use creates it)."""
    from miner.migrate import ensure_schema

    cfg = _config(ctx)
    cfg.ensure_dirs()
    if not ctx.obj.get("migrated"):
        ensure_schema(cfg.db_url)
        ctx.obj["migrated"] = True
    return cfg


@click.group(cls=MinerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bitext-miner")
def main() -> None:
    """Mine translated sentence pairs (bitext) from two monolingual corpora.

    Configuration comes from MINER_HOME, MINER_DB_URL, MINER_BROKER_URL, MINER_RESULT_BACKEND and
    MINER_ARTIFACTS; with none set, everything lives under one folder and no server is needed.
    """
    private_files()


def private_files() -> None:
    """Files and folders this process creates (database, logs, artifacts, broker messages) are for
    its user only: 0600 / 0700; outputs named with -o keep the user's usual mode."""
    from miner.artifacts import make_private

    make_private()


# --------------------------------------------------------------------------- job options


class ThresholdType(click.ParamType):
    """``--threshold``: a number, or ``auto``."""

    name = "NUMBER|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, float) or value is None:
            return value
        text = str(value).strip()
        if text.lower() == "auto":
            return "auto"
        try:
            number = float(text)
        except ValueError:
            self.fail(f"{value!r} is not a number or 'auto'", param, ctx)
        if number != number or number in (float("inf"), float("-inf")):
            self.fail(f"{value!r} is not a finite number; give a number or 'auto'", param, ctx)
        return number


THRESHOLD_HELP = (
    "Keep pairs scoring >= this (equal scores are kept; LASER keeps > only): a number, or auto (each job estimates its own cut from its score "
    "distribution, no gold needed). Default: the threshold `miner calibrate` stored for the model and "
    "margin, else auto. A number, a calibrated threshold and `export --min-score` take precedence over auto; "
    "auto falls back to the model's fixed default (muse/ratio 1.05) when the scores allow no estimate, "
    "with a warning."
)


def job_options(fn):
    """The options shared by ``mine`` and ``submit``."""
    decorators = [
        click.argument("src", type=click.Path(path_type=Path)),
        click.argument("tgt", type=click.Path(path_type=Path)),
        click.option("--src-lang", required=True, help="Language code of SRC (ISO 639-1 or 639-3; a label)."),
        click.option("--tgt-lang", required=True, help="Language code of TGT."),
        click.option("--model", default=defaults.MODEL, show_default=True,
                     help="muse, minilm, a local sentence-transformers directory or a Hugging Face id."),
        click.option("--k", "k", type=click.IntRange(min=1), default=defaults.K, show_default=True,
                     help="Neighbours per sentence for the margin."),
        click.option("--margin", type=click.Choice(["ratio", "distance", "absolute"]), default=defaults.MARGIN,
                     show_default=True, help="Margin function (Artetxe & Schwenk 2019)."),
        click.option("--retrieval", type=click.Choice(["max", "intersect", "fwd", "bwd"]), default=defaults.RETRIEVAL,
                     show_default=True, help="Which candidates to keep."),
        click.option("--threshold", type=ThresholdType(), default=None, metavar="NUMBER|auto", help=THRESHOLD_HELP),
        click.option("--shard-size", type=click.IntRange(min=1), default=defaults.SHARD_SIZE, show_default=True,
                     help="Sentences per shard (unit of parallel work)."),
        click.option("--max-line-length", type=click.IntRange(min=1), default=defaults.MAX_LINE_LENGTH,
                     show_default=True, help="Longer lines (characters) are skipped and counted."),
        click.option("--on-decode-error", type=click.Choice(["skip", "replace", "fail"]), default="skip",
                     show_default=True, help="Lines that are not valid UTF-8: skip (counted), replace bytes, or fail."),
        click.option("--index", "index", type=click.Choice(["auto", "flat", "ivf", "ivfpq"]), default="auto",
                     show_default=True,
                     help="Search index per side: auto = exact (flat) up to 100,000 sentences, IVF up to 2M, then IVF-PQ."),
        click.option("--nlist", type=click.IntRange(min=1), default=None,
                     help="IVF lists (default about 4*sqrt(sentences), a power of two)."),
        click.option("--nprobe", type=click.IntRange(min=1), default=None,
                     help="IVF lists searched per query (default 16; nlist/256 above 4096 lists, at most 64)."),
        click.option("--storage", type=click.Choice(["auto", "float32", "float16"]), default="auto", show_default=True,
                     help="Embeddings on disk: auto = float16 for sides searched by an IVF index, else float32."),
        click.option("--trust-remote-code", "trust_remote_code", is_flag=True, default=None,
                     help="Let a local or Hugging Face model run code of its own (custom module classes, "
                          "auto_map) when the workers load it. Off by default (MINER_TRUST_REMOTE_CODE=1 "
                          "turns it on); muse and minilm need no code of their own."),
        click.option("--force", is_flag=True,
                     help="Mine again even when a job with the same files (by content) and options exists."),
    ]
    for decorator in reversed(decorators):
        fn = decorator(fn)
    return fn


def _prepare_job(ctx: click.Context, src: Path, tgt: Path, **opts) -> tuple[int, bool]:
    """Check inputs and options, then create the job row. Returns (job id, False); or, when a
    queued, running or done job already has the same inputs (by content) and options and
    ``--force`` is not given, (that job's id, True)."""
    from miner.encoders import check_trust, resolve_model
    from miner.jobs import JobOptions, create_job
    from miner.languages import language_warnings, normalise_code
    from miner.reader import check_input_file

    for path in (src, tgt):
        check_input_file(path)
    if src.resolve() == tgt.resolve():
        warn(f"the same file is given for both sides ({src}); every sentence will pair with itself")
    spec = resolve_model(opts["model"])
    trust = bool(opts.get("trust_remote_code") or _config(ctx).trust_remote_code)
    check_trust(spec, trust)  # a local model that needs its own code fails here, not in a worker
    for side in ("src_lang", "tgt_lang"):
        for message in language_warnings(opts[side], spec.languages, opts["model"]):
            warn(message)
    method, threshold, fallback = _threshold_choice(ctx, spec, opts["margin"], opts["threshold"])
    options = JobOptions(
        src_lang=normalise_code(opts["src_lang"]),
        tgt_lang=normalise_code(opts["tgt_lang"]),
        model=opts["model"],
        model_key=spec.key,
        k=opts["k"],
        margin=opts["margin"],
        retrieval=opts["retrieval"],
        threshold=threshold,
        threshold_method=method,
        fallback_threshold=fallback,
        shard_size=opts["shard_size"],
        max_line_length=opts["max_line_length"],
        on_decode_error=opts["on_decode_error"],
        index=opts.get("index") or "auto",
        nlist=opts.get("nlist"),
        nprobe=opts.get("nprobe"),
        storage=opts.get("storage") or "auto",
        trust_remote_code=trust,
    )
    cfg = _db(ctx)
    from miner.jobs import find_duplicate, request_key
    from miner.reader import file_digest

    key = request_key(file_digest(src), file_digest(tgt), options)
    duplicate = find_duplicate(cfg, key)
    if duplicate is not None:
        other, state = duplicate
        if state in ("queued", "running", "done") and not opts.get("force"):
            warn(f"job {other} ({state}) already mines these files (same content) with these options; "
                 f"using it (--force mines again)")
            return other, True
        if state in ("failed", "cancelled") and not opts.get("force"):
            warn(f"job {other} with the same files and options is {state}; `miner retry {other}` resumes it")
    return create_job(cfg, src, tgt, options, request_key=key), False


def _threshold_choice(ctx: click.Context, spec, margin: str, asked) -> tuple[str, float | None, float | None]:
    """(method, threshold, fallback) of a new job from ``--threshold`` (a number, "auto" or None):
    a number is "fixed"; none given is the threshold `miner calibrate` stored for the model and
    margin ("calibrated"), else "auto"; "auto" is auto even when a calibration exists. An auto job
    gets the model's fixed default (calibrated, else bundled) to fall back to."""
    alias = spec.name if spec.kind == "alias" else ""
    if isinstance(asked, float):
        return "fixed", asked, None
    calibrated = defaults.calibrated_default(alias, margin, model_key=spec.key, home=_config(ctx).home)
    if asked is None and calibrated is not None:
        return "calibrated", calibrated, None
    fixed = calibrated if calibrated is not None else defaults.bundled_threshold(alias, margin)
    return "auto", None, fixed


def export_options(fn):
    """The output options shared by ``export`` and ``mine``: where (``-o``, the format from the name or
    ``--format``), the score floor, the header, probabilities and the filters (:mod:`miner.filters`)."""
    decorators = [
        click.option("-o", "--output", "output", required=True,
                     help="Output file (.gz compresses, - for stdout; the file name prefix with --format moses)."),
        click.option("--min-score", type=float, default=None,
                     help="Keep pairs scoring >= this (equal scores are kept; LASER keeps > only). Default: the job's "
                          "threshold, automatic or not; this wins."),
        click.option("--header", is_flag=True, help="Write a header line (score, source, target[, probability])."),
        click.option("--with-probability", is_flag=True,
                     help="Add the estimated probability that the pair is a translation: a 4th TSV column, a JSONL key "
                          "(--threshold auto jobs; empty / null otherwise)."),
        click.option("--min-probability", type=click.FloatRange(min=0, max=1), default=None,
                     help="Drop pairs whose estimated probability is below P (--threshold auto jobs only)."),
        click.option("--format", "fmt", type=click.Choice(["tsv", "jsonl", "moses"]), default=None,
                     help="tsv (default; .gz compresses), jsonl (score, src, tgt, 1-based src_line/tgt_line; default for "
                          ".jsonl names), moses (two files OUTPUT.SRC_LANG and OUTPUT.TGT_LANG)."),
        click.option("--max-score", type=float, default=None, help="Drop pairs scoring above this (likely boilerplate)."),
        click.option("--min-length", type=click.IntRange(min=0), default=None, help="Drop pairs with a side shorter than N characters."),
        click.option("--max-length", type=click.IntRange(min=0), default=None, help="Drop pairs with a side longer than N characters."),
        click.option("--max-length-ratio", type=click.FloatRange(min=1), default=None,
                     help="Drop pairs whose longer side has more than R times the characters of the shorter."),
        click.option("--drop-identical", is_flag=True, help="Drop pairs whose sides are equal ignoring case, spaces and punctuation."),
        click.option("--drop-digit-mismatch", is_flag=True, help="Drop pairs whose numbers differ between the sides."),
        click.option("--dedup", is_flag=True, help="Drop pairs equal to a better-scoring pair (ignoring case, spaces, punctuation)."),
        click.option("--langid", is_flag=True, help="Drop pairs with a side not in the job's language for it (py3langid)."),
        click.option("--langid-min-share", type=click.FloatRange(min=0, max=1, min_open=True), default=0.25, show_default=True,
                     help="A side passes when its language's probability is at least this share of the top language's."),
    ]
    for decorator in reversed(decorators):
        fn = decorator(fn)
    return fn


def _export(cfg: Config, job_id: int, output: str, *, min_score, header, with_probability, min_probability, fmt,
            max_score, min_length, max_length, max_length_ratio, drop_identical, drop_digit_mismatch, dedup, langid,
            langid_min_share, progress: bool = True) -> None:
    """Write the job's pairs as ``export`` does (:func:`miner.export.export_pairs`), with its summary lines."""
    from miner.export import export_pairs
    from miner.filters import FilterOptions

    filters = FilterOptions(min_score=min_score, max_score=max_score, min_probability=min_probability,
                            min_length=min_length, max_length=max_length,
                            max_length_ratio=max_length_ratio, drop_identical=drop_identical,
                            drop_digit_mismatch=drop_digit_mismatch, langid=langid, langid_min_share=langid_min_share,
                            dedup=dedup)
    result = export_pairs(cfg, job_id, output, fmt=fmt, header=header, filters=filters, warn=warn, progress=progress,
                          with_probability=with_probability)
    if result.summary:
        click.echo(f"job {job_id} {result.summary}", err=True)
    where = " and ".join(result.paths)
    click.echo(f"job {job_id}: {result.written} pairs written to {where}", err=True)


def _warn_filesystem_broker(cfg: Config) -> None:
    if cfg.broker_url.startswith("filesystem://"):
        warn("MINER_BROKER_URL=filesystem:// can lose a task when several processes use it (kombu's "
             "filesystem transport reads messages without a lock); unset MINER_BROKER_URL for the "
             "embedded Redis broker")


def _send(cfg: Config, job_id: int) -> None:
    """Send the job's first tasks. When the broker cannot be reached, the job is marked failed (not
    left queued, where nothing would ever pick it up and a new submit would call it a duplicate),
    and ``miner retry JOB`` sends it again."""
    from kombu.exceptions import OperationalError as BrokerError

    from miner.steps import mark_failed
    from workers.workflows import submit

    _warn_filesystem_broker(cfg)
    try:
        submit(job_id, cfg)
    except (BrokerError, ConnectionError, TimeoutError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        message = (f"could not reach the broker at {mask_url(cfg.broker_url)}: {detail}; "
                   f"`miner retry {job_id}` sends it again once the broker is up")
        mark_failed(cfg, job_id, message)
        raise JobFailed(f"job {job_id}: {message}") from None


@main.command()
@job_options
@export_options
@click.option("--workers", "n_workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Local worker processes to start when no worker is running.")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Tasks in parallel per local worker (default: the number of cores).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.pass_context
def mine(ctx, output, n_workers, concurrency, quiet, src, tgt, **opts):
    """Mine SRC against TGT and write the pairs (blocking).

    Starts local worker processes when none is running, shows progress per stage, exports when
    done, as `miner export` does: TSV lines score<TAB>source<TAB>target, best first (JSONL for
    .jsonl names, or --format), with the same filters.
    """
    export_names = ("min_score", "header", "with_probability", "min_probability", "fmt", "max_score", "min_length",
                    "max_length", "max_length_ratio", "drop_identical", "drop_digit_mismatch", "dedup", "langid",
                    "langid_min_share")
    export_opts = {name: opts.pop(name) for name in export_names}
    from miner.export import check_output

    check_output(output, export_opts["fmt"], export_opts["header"], export_opts["with_probability"])  # before mining
    job_id, existing = _prepare_job(ctx, src, tgt, **opts)
    cfg = _db(ctx)
    click.echo(f"job {job_id}", err=True)
    started = []
    try:
        from miner.jobs import get_job

        trust = bool((get_job(cfg, job_id).options or {}).get("trust_remote_code"))

        def start_local() -> list:
            return _start_workers(cfg, n_workers, concurrency, model=opts.get("model"), trust_remote_code=trust)

        if not (existing and _status_dict(cfg, job_id)["state"] == "done") and not _workers_alive(cfg=cfg):
            started = start_local()
        if not existing:
            _send(cfg, job_id)
        # Without workers of its own, `mine` relies on others (`miner worker`, another `mine`): when
        # they go away before the job is done, it starts its own.
        status = _watch(cfg, job_id, quiet=quiet, workers=started, start_local=None if started else start_local)
        _signal_workers(started)  # they shut down while the export runs
    except KeyboardInterrupt:
        _stop_workers(started)
        click.echo(f"interrupted: job {job_id} is left as it is; `miner cancel {job_id}` or `miner retry {job_id}`",
                   err=True)
        sys.exit(130)
    except BaseException:
        _stop_workers(started)
        raise
    try:
        _raise_if_failed(status)
        asked = opts.get("threshold")
        if existing and export_opts["min_score"] is None and isinstance(asked, float):
            export_opts["min_score"] = asked  # the threshold asked for now, not the one of the earlier job
        elif (existing and export_opts["min_score"] is None and asked == "auto"
              and status["threshold"]["method"] in ("fixed", "calibrated")):
            warn(f"job {job_id} was mined with a {status['threshold']['method']} threshold "
                 f"{status['threshold']['value']:g}, which is used; --threshold auto applies to new jobs "
                 f"(--force mines again)")
        _print_skips(status)
        _print_threshold(status, export_opts["min_score"])
        _export(cfg, job_id, output, progress=not quiet, **export_opts)
        if output != "-":
            click.echo(job_id)
    except BaseException:
        _stop_workers(started)
        raise
    # Done: the local workers, told to stop before the export, finish shutting down on their own
    # (an idle Celery worker takes about 2 s, which `mine` does not wait for).


@main.command()
@job_options
@click.pass_context
def submit(ctx, src, tgt, **opts):
    """Queue a mining job and print its id (last line of stdout); returns at once."""
    job_id, existing = _prepare_job(ctx, src, tgt, **opts)
    if existing:
        click.echo(job_id)
        return
    _send(_config(ctx), job_id)
    if not _workers_alive(cfg=_config(ctx)):
        warn("no worker answered; the job waits in the queue until you start one with `miner worker`")
    click.echo(job_id)


def _raise_if_failed(status: dict) -> None:
    if status["state"] == "done":
        return
    error = JobFailed(f"job {status['id']} {status['state']}: {status.get('error') or 'no reason recorded'}")
    if status["state"] == "failed" and status.get("exit_code"):
        error.exit_code = status["exit_code"]
    raise error


def _print_threshold(status: dict, min_score: float | None = None) -> None:
    """One line with the job's cut and how it was chosen (stderr); a fallback adds its warning line."""
    from miner.jobs import fallback_warning, threshold_note

    threshold = status.get("threshold") or {}
    message = fallback_warning(status["id"], threshold)
    if message:
        warn(message)
    if min_score is not None:
        click.echo(f"job {status['id']}: exported at --min-score {min_score:g}", err=True)
    elif threshold.get("value") is not None:
        click.echo(f"job {status['id']}: threshold {threshold['value']:.4g} ({threshold_note(threshold)})", err=True)


def _print_skips(status: dict) -> None:
    for side, info in (status.get("corpora") or {}).items():
        if not info:
            continue
        skipped = {k: v for k, v in info["skipped"].items() if v}
        if skipped:
            parts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in skipped.items())
            click.echo(f"{side}: {info['sentences']} sentences kept; skipped {parts}", err=True)


# --------------------------------------------------------------------------- workers


def _workers_alive(timeout: float = 1.0, cfg: Config | None = None) -> list:
    """Names of the workers that answer a ping (empty when none, or the transport cannot broadcast)."""
    try:
        from workers.app import app, use_config

        if cfg is not None:
            use_config(cfg)
            from miner import broker

            if broker.is_embedded_url(cfg.broker_url):
                broker.ensure(cfg.home)
                if broker.alone(cfg.home):
                    return []  # no other process uses this broker: no worker could answer
        replies = app.control.ping(timeout=timeout) or []
        return [name for reply in replies for name in reply]
    except Exception:
        return []


def _start_workers(cfg: Config, n: int, concurrency: int | None, model: str | None = None,
                   trust_remote_code: bool = False) -> list[subprocess.Popen]:
    procs = []
    env = dict(os.environ, MINER_PRELOAD_MODEL=model,
               MINER_PRELOAD_TRUST_REMOTE_CODE="1" if trust_remote_code else "0") if model else None
    cfg.log_folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        log = open(cfg.log_folder / f"worker-{os.getpid()}-{i}.log", "ab")
        cmd = [sys.executable, "-m", "miner", "worker", "--loglevel", "WARNING"]
        if concurrency:
            cmd += ["--concurrency", str(concurrency)]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        proc.log_path = log.name
        procs.append(proc)
    return procs


def _log_tail(path, lines: int = 15) -> str:
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 20000))
            tail = f.read().decode("utf-8", "replace").splitlines()[-lines:]
    except OSError as exc:
        return f"  ({path}: {exc.strerror})"
    return f"  == {path}\n" + "\n".join("  " + line for line in tail)


def _signal_workers(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)


def _stop_workers(procs: list[subprocess.Popen], timeout: float = 30.0) -> None:
    _signal_workers(procs)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@main.command()
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=None,
              help="Tasks in parallel (processes); default: the number of cores.")
@click.option("--queues", "-Q", default=f"{DEFAULT_QUEUE},{EMBED_QUEUE}", show_default=True,
              help=f"Queues to consume: '{EMBED_QUEUE}' for embedding (GPU workers), '{DEFAULT_QUEUE}' for the rest.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="BLAS/torch/FAISS threads per process (default: MINER_THREADS, else cores / concurrency).")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.option("--name", "-n", default=None, help="Worker name (default: miner-<pid>@<host>).")
@click.option("--events", "-E", is_flag=True, help="Send task events (for Flower or `celery events`).")
@click.pass_context
def worker(ctx, concurrency, queues, threads, loglevel, name, events):
    """Run a worker process (Ctrl-C stops it after the running tasks)."""
    cfg = _db(ctx)
    _warn_filesystem_broker(cfg)
    cores = available_cores()
    concurrency = concurrency or cores
    os.environ["MINER_THREADS"] = str(threads or cfg.threads or max(1, cores // concurrency))
    from workers.app import app, limit_threads

    limit_threads(int(os.environ["MINER_THREADS"]))
    argv = ["worker", "--concurrency", str(concurrency), "--queues", queues, "--loglevel", loglevel,
            "--hostname", name or f"miner-{os.getpid()}@%h", "--without-gossip", "--without-mingle"]
    if events:
        argv.append("--task-events")
    click.echo(f"worker: broker {mask_url(cfg.broker_url)}, database {mask_url(cfg.db_url)}, "
               f"{concurrency} processes x {os.environ['MINER_THREADS']} threads, queues {queues}", err=True)
    app.worker_main(argv)


@main.command()
@click.option("--timeout", type=float, default=2.0, show_default=True, help="Seconds to wait for replies.")
@click.option("--json", "as_json", is_flag=True, help="Print the names as JSON.")
@click.pass_context
def workers(ctx, timeout, as_json):
    """List the workers that answer a ping on the broker (exit code 1 when none does)."""
    cfg = _config(ctx)
    if cfg.broker_url.startswith(("sqla+", "sqlalchemy+")):
        raise UsageError(f"the broker {mask_url(cfg.broker_url)} cannot broadcast, so workers cannot be pinged; "
                         "`miner status JOB` shows the workers seen by a job")
    names = sorted(_workers_alive(timeout, cfg=cfg))
    if as_json:
        click.echo(json.dumps(names))
    else:
        for name in names:
            click.echo(name)
        if not names:
            click.echo(f"no worker answered on {mask_url(cfg.broker_url)}", err=True)
    if not names:
        sys.exit(1)


# --------------------------------------------------------------------------- status


def _resolve_job_id(cfg: Config, job: int | None) -> int:
    from miner.jobs import latest_job_id

    return job if job is not None else latest_job_id(cfg)


def _status_dict(cfg: Config, job_id: int) -> dict:
    from miner.jobs import job_status

    return job_status(cfg, job_id)


def _format_eta(seconds) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    return f"ETA {seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"ETA {seconds}s"


def _print_status(status: dict) -> None:
    click.echo(f"job {status['id']}  {status['state']}  {status['src_lang']}-{status['tgt_lang']}  "
               f"model {status['model']}  elapsed {status['elapsed_s']:.1f}s")
    click.echo(f"  src {status['src']}")
    click.echo(f"  tgt {status['tgt']}")
    for stage in status["stages"]:
        total = stage["total"] if stage["total"] is not None else "?"
        items = f"{stage['items_done']:,}" + (f"/{stage['items_total']:,}" if stage["items_total"] else "")
        reused = f"  ({stage['reused']} reused)" if stage["reused"] else ""
        rate = f"  {stage['rate']:,.0f}/s" if stage.get("rate") else ""
        click.echo(f"  {stage['stage']:<7} {stage['done']:>5}/{total:<5} {items:>22}  "
                   f"{_format_eta(stage['eta_s'])}{rate}{reused}")
        if len(stage.get("parts") or {}) > 1:
            for part, info in stage["parts"].items():
                part_items = f"{info['items_done']:,}" + (f"/{info['items_total']:,}" if info["items_total"] else "")
                click.echo(f"    {part:<5} {info['done']:>5}/{info['total']:<5} {part_items:>22}")
    if status.get("workers"):
        names = ", ".join(f"{w['name']} ({w['units']})" for w in status["workers"])
        click.echo(f"  workers seen: {len(status['workers'])}: {names}")
    for lease in status.get("running") or []:
        click.echo(f"  running: {lease['stage']} {lease['unit']} on {lease['worker']} "
                   f"(heartbeat {lease['heartbeat_age_s']:.0f}s ago)")
    for stage, units in (status.get("missing") or {}).items():
        if units and status["state"] in ("failed", "cancelled"):
            shown = ", ".join(units[:10]) + (f" and {len(units) - 10} more" if len(units) > 10 else "")
            click.echo(f"  missing {stage} units: {shown} (`miner retry {status['id']}` runs them)")
    threshold = status.get("threshold") or {}
    if status["pairs"] is not None:
        from miner.jobs import threshold_note

        value = threshold.get("value")
        shown = f"{value:.4g}" if isinstance(value, (int, float)) else "none"
        click.echo(f"  pairs: {status['pairs']:,} at threshold {shown} ({threshold_note(threshold)}); "
                   f"{status['candidates_stored']:,} candidates stored")
    elif threshold.get("method"):
        value = threshold.get("value")
        shown = f"{value:g} ({threshold['method']})" if isinstance(value, (int, float)) else (
            "auto (chosen when the job finishes)" if threshold["method"] == "auto" else threshold["method"])
        click.echo(f"  threshold: {shown}")
    if status.get("error"):
        click.echo(f"  error: {status['error']}")
    from miner.jobs import fallback_warning

    message = fallback_warning(status["id"], threshold)
    if message:
        warn(message)


def _update_bars(bars: dict, status: dict) -> None:
    """One bar per stage and side (or direction), in sentences, with rate and ETA; a job bar
    counting shards of every stage, with the workers seen."""
    from tqdm import tqdm

    units_total = sum(stage["total"] or 0 for stage in status["stages"])
    units_done = sum(stage["done"] for stage in status["stages"])
    job_bar = bars.get("job")
    if job_bar is None:
        job_bar = bars["job"] = tqdm(total=units_total, desc=f"job {status['id']:<9}", unit="task", position=0,
                                     leave=True, file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
    job_bar.total = units_total
    job_bar.update(units_done - job_bar.n)
    job_bar.set_postfix_str(f"{status['state']}, workers seen: {len(status.get('workers') or [])}", refresh=False)
    job_bar.refresh()
    position = 1
    for stage in status["stages"]:
        for part, info in (stage.get("parts") or {}).items():
            key = f"{stage['stage']} {part}" if part != "all" else stage["stage"]
            bar = bars.get(key)
            total = info["items_total"] or None
            if bar is None:
                bar = bars[key] = tqdm(total=total, desc=f"{key:<15}", unit="sent", unit_scale=True,
                                       position=position, leave=True, file=sys.stderr, dynamic_ncols=True,
                                       mininterval=0.5)
            position += 1
            bar.total = total
            bar.update(info["items_done"] - bar.n)
            bar.set_postfix_str(f"{info['done']}/{info['total']} shards", refresh=False)
            bar.refresh()


def _watch(cfg: Config, job_id: int, *, quiet: bool = False, workers: list | None = None, interval: float = 0.5,
           start_local=None, check_every: float = 5.0) -> dict:
    """Show one progress bar per stage until the job finishes; returns the final status.

    ``workers``: local worker processes; an error when all of them exit before the job is done.
    ``start_local``: when given (no local workers yet), every ``check_every`` seconds the workers
    are pinged, and when none answers, ``start_local()`` starts local ones (added to ``workers``)."""
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}
    next_check = time.monotonic() + check_every
    try:
        while True:
            status = _status_dict(cfg, job_id)
            if not quiet:
                _update_bars(bars, status)
            if status["state"] in FINISHED:
                return status
            if start_local is not None and not workers and time.monotonic() >= next_check:
                if not _workers_alive(cfg=cfg):
                    status = _status_dict(cfg, job_id)
                    if status["state"] in FINISHED:
                        return status
                    if workers is not None:
                        workers.extend(start_local())
                    else:
                        workers = start_local()
                next_check = time.monotonic() + check_every
            if workers and all(p.poll() is not None for p in workers):
                status = _status_dict(cfg, job_id)  # a task may have finished the job as they exited
                if status["state"] in FINISHED:
                    return status
                codes = ", ".join(str(p.returncode) for p in workers)
                raise MinerError(
                    f"the local worker processes exited (exit code {codes}) while job {job_id} was "
                    f"{status['state']}; then `miner retry {job_id}`. Last lines of their logs:\n"
                    + "\n".join(_log_tail(getattr(p, "log_path", None)) for p in workers)
                )
            time.sleep(interval)
    finally:
        for bar in bars.values():
            bar.close()


@main.command()
@click.argument("job", type=int, required=False)
@click.option("--watch", "-w", is_flag=True, help="Follow progress until the job finishes.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (with --watch: one per update).")
@click.option("--interval", type=float, default=1.0, show_default=True, help="Seconds between updates with --watch.")
@click.pass_context
def status(ctx, job, watch, as_json, interval):
    """Progress of JOB (default: the latest job): state, stages, sentences, pairs, ETA."""
    cfg = _db(ctx)
    job_id = _resolve_job_id(cfg, job)
    if watch and not as_json:
        _watch(cfg, job_id, interval=interval)
    while True:
        data = _status_dict(cfg, job_id)
        if as_json:
            click.echo(json.dumps(data, sort_keys=False))
        elif not watch:
            _print_status(data)
        if not watch or data["state"] in FINISHED:
            if watch and not as_json:
                _print_status(data)
            return
        time.sleep(interval)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.pass_context
def jobs(ctx, as_json, limit):
    """List jobs, newest first."""
    from miner.jobs import list_jobs

    rows = list_jobs(_db(ctx), limit)
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("no jobs yet; start one with `miner mine` or `miner submit`")
        return
    click.echo(f"{'id':>5}  {'state':<9}  {'langs':<7}  {'model':<10}  {'pairs':>8}  created")
    for r in rows:
        pairs = "" if r["pairs"] is None else f"{r['pairs']:,}"
        click.echo(f"{r['id']:>5}  {r['state']:<9}  {r['langs']:<7}  {r['model'][:10]:<10}  {pairs:>8}  {r['created_at'][:19]}")


@main.command()
@click.argument("job", type=int)
@export_options
@click.pass_context
def export(ctx, job, output, **options):
    """Write JOB's pairs as score<TAB>source<TAB>target, best first.

    By default the pairs at or above the job's threshold (the cut it chose: automatic, a number, or
    calibrated); --min-score replaces it. Optional filters each count the pairs they remove in one
    summary line on stderr.
    """
    _export(_db(ctx), job, output, **options)


def _gold_options(fn):
    decorators = [
        click.option("--gold-format", "gold_format", type=click.Choice(["auto", "ids", "text"]), default="auto",
                     show_default=True, help="ids: SRC_ID<TAB>TGT_ID line numbers (BUCC); text: SOURCE<TAB>TARGET."),
        click.option("--id-base", type=click.Choice(["0", "1"]), default="1", show_default=True,
                     help="Gold ids count lines from 1 (BUCC, editors) or 0."),
        click.option("--sample", is_flag=True,
                     help="The gold covers a sample of source sentences: judge only pairs whose source is in it."),
    ]
    for decorator in reversed(decorators):
        fn = decorator(fn)
    return fn


@main.command("eval")
@click.argument("job", type=int)
@click.option("--gold", "gold", required=True, help="Gold pairs: SRC_ID<TAB>TGT_ID (1-based lines) or SOURCE<TAB>TARGET.")
@_gold_options
@click.option("--step", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Spacing of the thresholds in the table (default: about 20 round values).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def eval_(ctx, job, gold, gold_format, id_base, sample, step, as_json):
    """Precision, recall and F1 of JOB against GOLD, at the job's threshold and across thresholds."""
    from miner.quality import evaluate, format_eval

    result = evaluate(_db(ctx), job, gold, fmt=gold_format, id_base=int(id_base), sample=sample, step=step, warn=warn)
    click.echo(json.dumps(result) if as_json else format_eval(result))


@main.command()
@click.argument("jobs", type=int, nargs=-1)
@click.option("--gold", "golds", multiple=True,
              help="Gold file of each JOB, in the same order (repeat the option).")
@_gold_options
@click.option("--decimals", type=click.IntRange(min=0, max=6), default=None,
              help="Round the threshold to this many decimals (default: ratio 2, distance 3, absolute 2).")
@click.option("--dry-run", is_flag=True, help="Recommend only; do not store the threshold.")
@click.option("--show", is_flag=True, help="List the stored calibrated thresholds and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def calibrate(ctx, jobs, golds, gold_format, id_base, sample, decimals, dry_run, show, as_json):
    """Recommend a threshold from dev JOBS with gold pairs and store it as the model's default.

    The threshold maximises the mean F1 over the jobs (same model and margin). It is stored in
    $MINER_HOME/thresholds.json; new jobs without --threshold use it.
    """
    from miner import defaults
    from miner.quality import calibrate as run_calibration
    from miner.quality import format_calibration

    cfg = _config(ctx)
    if show:
        stored = defaults.load_calibrations(cfg.home)
        if as_json:
            click.echo(json.dumps(stored))
        elif not stored:
            click.echo(f"no calibrated thresholds in {defaults.calibration_path(cfg.home)}; bundled defaults apply")
        for model, margins in stored.items() if not as_json else ():
            for margin, entry in margins.items():
                click.echo(f"{model}/{margin}: {entry.get('threshold')} (mean F1 {100 * entry.get('mean_f1', 0):.2f}, "
                           f"{len(entry.get('jobs', []))} job(s), stored {entry.get('stored_at', '?')})")
        return
    if not jobs:
        raise UsageError("give the dev JOBS and one --gold per job (or --show)")
    if len(golds) != len(jobs):
        raise UsageError(f"{len(jobs)} job(s) but {len(golds)} --gold file(s); give one --gold per job, in order")
    result = run_calibration(_db(ctx), list(zip(jobs, golds)), fmt=gold_format, id_base=int(id_base), sample=sample,
                             decimals=decimals, store=not dry_run, warn=warn)
    click.echo(json.dumps(result) if as_json else format_calibration(result))


@main.command()
@click.argument("job", type=int)
@click.option("-o", "--output", "output", default=None, help="HTML file (default: report-JOB.html).")
@click.option("--png", "png", default=None, help="PNG file (default: the HTML name with .png).")
@click.option("--per-band", "per_band", type=click.IntRange(min=0), default=10, show_default=True,
              help="Random pairs shown per score band.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random sample.")
@click.pass_context
def report(ctx, job, output, png, per_band, seed):
    """Write a self-contained HTML page and a PNG about JOB's scores (histogram, threshold, length ratios, samples)."""
    from miner.report import build_report

    output = output or f"report-{job}.html"
    summary = build_report(_db(ctx), job, output, png, per_band=per_band, seed=seed,
                           log=lambda message: click.echo(message, err=True))
    click.echo(f"job {job}: {summary['above_threshold']:,} of {summary['candidates']:,} candidates at or above "
               f"{summary['threshold']:g} ({summary['threshold_method']}); wrote {summary['html']} and "
               f"{summary['png']}", err=True)
    click.echo(summary["html"])


@main.command()
@click.argument("job", type=int)
@click.pass_context
def cancel(ctx, job):
    """Cancel JOB: its queued and running tasks stop at their next step."""
    from miner.jobs import cancel_job

    old = cancel_job(_db(ctx), job)
    if old in ("done", "cancelled"):
        click.echo(f"job {job} is already {old}")
    else:
        click.echo(f"job {job} cancelled (was {old})")


@main.command()
@click.argument("job", type=int)
@click.option("--wait", is_flag=True, help="Block until the job finishes (needs a running worker).")
@click.option("--force", is_flag=True, help="Also re-run a done, queued or running job (finished work is still skipped).")
@click.pass_context
def retry(ctx, job, wait, force):
    """Run JOB again: finished shards are kept and skipped, failed or missing ones run."""
    from miner.jobs import get_job, reset_for_retry

    cfg = _db(ctx)
    state = get_job(cfg, job).state
    reset_for_retry(cfg, job, force=force)
    _send(cfg, job)
    click.echo(f"job {job} queued again (was {state})")
    if wait:
        status = _watch(cfg, job)
        _raise_if_failed(status)
        _print_threshold(status)


@main.group()
def db():
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.pass_context
def db_upgrade(ctx, revision):
    """Apply migrations up to REVISION."""
    from miner.migrate import current_revision, upgrade

    cfg = _config(ctx)
    cfg.ensure_dirs()
    upgrade(cfg.db_url, revision)
    click.echo(f"database {mask_url(cfg.db_url)} at revision {current_revision(cfg.db_url)}")


@db.command("downgrade")
@click.argument("revision")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def db_downgrade(ctx, revision, yes):
    """Revert migrations down to REVISION ('base' drops every table: all jobs and pairs are lost)."""
    from miner.migrate import current_revision, downgrade

    cfg = _config(ctx)
    if not yes:
        click.confirm(f"downgrade {mask_url(cfg.db_url)} to {revision}? Data in dropped tables is lost", abort=True)
    downgrade(cfg.db_url, revision)
    click.echo(f"database {mask_url(cfg.db_url)} at revision {current_revision(cfg.db_url) or 'base (empty)'}")


@db.command("current")
@click.pass_context
def db_current(ctx):
    """Print the schema revision of the database."""
    from miner.migrate import current_revision, head_revision

    cfg = _config(ctx)
    click.echo(f"{current_revision(cfg.db_url) or 'empty'} (head {head_revision()})")


@main.command()
@click.pass_context
def config(ctx):
    """Print the configuration in effect (passwords masked)."""
    for key, value in _config(ctx).masked().items():
        click.echo(f"{key}: {value}")


if __name__ == "__main__":
    main()
