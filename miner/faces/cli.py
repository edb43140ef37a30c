"""The ``miner`` command line: parses options, calls the library, prints.

The shared options and error handling are in :mod:`miner.faces.cli_options`, the progress and status
text in :mod:`miner.faces.progress`, the local worker processes of ``miner mine`` in
:mod:`miner.runtime.local_workers`, and what is asked of the task queue in :mod:`miner.workers.client`.

Exit codes: 0 success; 1 a job failed or another runtime error; 2 bad options or arguments
(unknown option, k < 1, missing job, ...); 3 bad input file (missing, empty, unreadable, not
text, blank lines only); 4 a model that cannot be resolved or loaded; 130 interrupted (143 SIGTERM, 129
SIGHUP).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from miner.faces.cli_options import MinerGroup, export_options, gold_options, job_options, warn
from miner.runtime.config import DEFAULT_QUEUE, EMBED_QUEUE, Config, available_cores, mask_url
from miner.pipeline.stages import QUEUES
from miner.runtime.errors import JobFailed, UsageError


def _config(ctx: click.Context) -> Config:
    return ctx.ensure_object(dict).setdefault("config", Config.from_env())


def _db(ctx: click.Context) -> Config:
    """The configuration, with the database schema brought up to date (first use creates it)."""
    from miner.runtime.migrate import ensure_schema

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
    from miner.io.artifacts import make_private

    make_private()


def _prepare_job(ctx: click.Context, src: Path, tgt: Path, **opts) -> tuple[int, bool]:
    """:func:`miner.pipeline.jobs.prepare_job` with this command's configuration and warnings."""
    from miner.pipeline.jobs import prepare_job

    return prepare_job(_config(ctx), src, tgt, warn=warn, open_db=lambda: _db(ctx), **opts)


def _export(cfg: Config, job_id: int, output: str, *, min_score, header, with_probability, min_probability, fmt,
            max_score, min_length, max_length, max_length_ratio, drop_identical, drop_digit_mismatch, dedup, langid,
            langid_min_share, with_ids=False, progress: bool = True) -> None:
    """Write the job's pairs as ``export`` does (:func:`miner.io.export.export_pairs`), with its summary lines."""
    from miner.io.export import export_pairs
    from miner.io.filters import FilterOptions

    filters = FilterOptions(min_score=min_score, max_score=max_score, min_probability=min_probability,
                            min_length=min_length, max_length=max_length,
                            max_length_ratio=max_length_ratio, drop_identical=drop_identical,
                            drop_digit_mismatch=drop_digit_mismatch, langid=langid, langid_min_share=langid_min_share,
                            dedup=dedup)
    result = export_pairs(cfg, job_id, output, fmt=fmt, header=header, filters=filters, warn=warn, progress=progress,
                          with_probability=with_probability, with_ids=with_ids)
    if result.summary:
        click.echo(f"job {job_id} {result.summary}", err=True)
    where = " and ".join("standard output" if path == "-" else path for path in result.paths)
    click.echo(f"job {job_id}: {result.written} pair{'' if result.written == 1 else 's'} written to {where}", err=True)


def _stop_on_signals() -> list[int]:
    """SIGTERM and SIGHUP (a closed terminal, `timeout`, a batch system's kill) interrupt `mine` as
    Ctrl-C does, so it stops the workers it started instead of leaving them running in their own
    session. Returns a list that receives the signal's number (for the exit code 128 + N)."""
    import signal

    received: list[int] = []

    def interrupt(signum, _frame):
        received.append(signum)
        raise KeyboardInterrupt

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)
    return received


def _warn_filesystem_broker(cfg: Config) -> None:
    if cfg.broker_url.startswith("filesystem://"):
        warn("MINER_BROKER_URL=filesystem:// can lose a task when several processes use it (kombu's "
             "filesystem transport reads messages without a lock); unset MINER_BROKER_URL for the "
             "embedded Redis broker")


def _send(cfg: Config, job_id: int) -> None:
    """Send the job's first tasks (:func:`miner.workers.client.send_or_fail`: a job whose broker cannot be
    reached is marked failed, and ``miner retry JOB`` sends it again)."""
    from miner.workers.client import send_or_fail

    _warn_filesystem_broker(cfg)
    send_or_fail(cfg, job_id)


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
    export_names = ("min_score", "header", "with_probability", "with_ids", "min_probability", "fmt", "max_score", "min_length",
                    "max_length", "max_length_ratio", "drop_identical", "drop_digit_mismatch", "dedup", "langid",
                    "langid_min_share")
    export_opts = {name: opts.pop(name) for name in export_names}
    from miner.io.export import check_output
    from miner.runtime.local_workers import signal_workers, start_workers, stop_workers

    check_output(output, export_opts["fmt"], export_opts["header"], export_opts["with_probability"],
                 export_opts["with_ids"])  # before mining
    job_id, existing = _prepare_job(ctx, src, tgt, **opts)
    cfg = _db(ctx)
    click.echo(f"job {job_id}", err=True)
    started = []
    stopped_by = _stop_on_signals()
    try:
        from miner.pipeline.jobs import get_job

        trust = bool((get_job(cfg, job_id).options or {}).get("trust_remote_code"))

        def start_local() -> list:
            return start_workers(cfg, n_workers, concurrency, model=opts.get("model"), trust_remote_code=trust)

        if not (existing and _status_dict(cfg, job_id)["state"] == "done") and not _ping(cfg):
            started = start_local()
        if not existing:
            _send(cfg, job_id)
        # Without workers of its own, `mine` relies on others (`miner worker`, another `mine`): when
        # they go away before the job is done, it starts its own.
        status = _watch(cfg, job_id, quiet=quiet, workers=started, start_local=None if started else start_local)
        signal_workers(started)  # they shut down while the export runs
    except KeyboardInterrupt:
        if started:
            click.echo(f"interrupted: stopping the {len(started)} worker(s) this `mine` started; the units they "
                       f"were running are left to `miner retry {job_id}` (finished ones are kept)", err=True)
        stop_workers(started, timeout=10.0, now=True)
        click.echo(f"interrupted: job {job_id} is left as it is; `miner cancel {job_id}` or `miner retry {job_id}`",
                   err=True)
        sys.exit(128 + stopped_by[0] if stopped_by else 130)
    except BaseException:
        stop_workers(started)
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
        stop_workers(started)
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
    if not _ping(_config(ctx)):
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
    """One line with the job's cut and how it was chosen (stderr); a fallback or an uncertain cut adds its warning line."""
    from miner.faces.progress import threshold_lines

    warning, line = threshold_lines(status, min_score)
    if warning:
        warn(warning)
    if line:
        click.echo(line, err=True)


def _print_skips(status: dict) -> None:
    from miner.faces.progress import skip_lines

    for line in skip_lines(status):
        click.echo(line, err=True)


def _ping(cfg: Config, timeout: float = 1.0) -> list[str]:
    """Names of the workers that answer on the broker (:func:`miner.workers.client.ping`)."""
    from miner.workers.client import ping

    return ping(cfg, timeout)


def _watch(cfg: Config, job_id: int, **kwargs) -> dict:
    """Follow the job's progress until it finishes (:func:`miner.faces.progress.watch`)."""
    from miner.faces.progress import watch

    return watch(lambda: _status_dict(cfg, job_id), alive=lambda: _ping(cfg), **kwargs)


def _print_status(status: dict) -> None:
    from miner.pipeline.threshold import threshold_warning
    from miner.faces.progress import status_lines

    for line in status_lines(status):
        click.echo(line)
    message = threshold_warning(status["id"], status.get("threshold") or {})
    if message:
        warn(message)


# --------------------------------------------------------------------------- workers


@main.command()
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=None,
              help="Tasks in parallel (processes); default: the number of cores.")
@click.option("--queues", "-Q", default=",".join(QUEUES), show_default=True,
              help=f"Queues to consume: '{EMBED_QUEUE}' for embedding (GPU workers), '{DEFAULT_QUEUE}' for the rest.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="BLAS/torch/FAISS threads per process (default: MINER_THREADS, else this host's cores divided "
                   "among the task processes of all its workers, sized again before each task).")
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
    if threads or cfg.threads:
        os.environ["MINER_THREADS"] = str(threads or cfg.threads)
        shown = f"{os.environ['MINER_THREADS']} threads"
    else:  # the host's cores, shared by the task processes of every worker on it (miner.runtime.cores)
        shown = f"a share of this host's {cores} cores"
    from miner.workers.app import use_config
    # Celery's banner only on a terminal: in a log file our one line below says what matters.
    argv = ([] if sys.stderr.isatty() else ["--quiet"]) + [
        "worker", "--concurrency", str(concurrency), "--queues", queues, "--loglevel", loglevel,
        "--hostname", name or f"miner-{os.getpid()}@%h", "--without-gossip", "--without-mingle"]
    if events:
        argv.append("--task-events")
    click.echo(f"worker: broker {mask_url(cfg.broker_url)}, database {mask_url(cfg.db_url)}, "
               f"{concurrency} processes x {shown}, queues {queues}", err=True)
    use_config(cfg).worker_main(argv)


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
    names = sorted(_ping(cfg, timeout))
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
    from miner.pipeline.status import latest_job_id

    return job if job is not None else latest_job_id(cfg)


def _status_dict(cfg: Config, job_id: int) -> dict:
    from miner.pipeline.status import job_status  # plain SQL: no ORM to import while workers run

    return job_status(cfg, job_id)


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
        if not watch or data["state"] in ("done", "failed", "cancelled"):
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
    from miner.pipeline.jobs import list_jobs

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
        note = f"  stalled: no worker on it (`miner status {r['id']}`)" if r.get("stalled") else ""
        click.echo(f"{r['id']:>5}  {r['state']:<9}  {r['langs']:<7}  {r['model'][:10]:<10}  {pairs:>8}  "
                   f"{r['created_at'][:19]}{note}")


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



@main.command("eval")
@click.argument("job", type=int)
@click.option("--gold", "gold", required=True,
              help="Gold pairs: SRC_ID<TAB>TGT_ID (1-based lines) or SOURCE<TAB>TARGET; - reads standard input.")
@gold_options
@click.option("--step", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Spacing of the thresholds in the table (default: about 20 round values).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def eval_(ctx, job, gold, gold_format, id_base, sample, step, as_json):
    """Precision, recall and F1 of JOB against GOLD, at the job's threshold and across thresholds."""
    from miner.faces.quality import evaluate, format_eval

    result = evaluate(_db(ctx), job, gold, fmt=gold_format, id_base=int(id_base), sample=sample, step=step, warn=warn)
    click.echo(json.dumps(result) if as_json else format_eval(result))


@main.command()
@click.argument("jobs", type=int, nargs=-1)
@click.option("--gold", "golds", multiple=True,
              help="Gold file of each JOB, in the same order (repeat the option); - reads standard input "
                   "(for one of them).")
@gold_options
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
    from miner.runtime import defaults
    from miner.faces.quality import calibrate as run_calibration
    from miner.faces.quality import format_calibration

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
    if golds.count("-") > 1:
        raise UsageError("--gold - (standard input) can be given once; give the other gold files by name")
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
    from miner.faces.report import build_report

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
    from miner.pipeline.jobs import cancel_job

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
    from miner.pipeline.jobs import get_job, reset_for_retry

    cfg = _db(ctx)
    state = get_job(cfg, job).state
    reset_for_retry(cfg, job, force=force)
    _send(cfg, job)
    click.echo(f"job {job} queued again (was {state})")
    if wait:
        status = _watch(cfg, job)
        _raise_if_failed(status)
        _print_threshold(status)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; any but a loopback address needs MINER_API_TOKEN.")
@click.option("--port", type=click.IntRange(min=1, max=65535), default=8000, show_default=True)
@click.pass_context
def serve(ctx, host, port):
    """Serve the HTTP API (/api, docs at /docs) and the dashboard (/) until interrupted."""
    from miner.faces.api import check_bind, serve as run

    cfg = _config(ctx)
    check_bind(cfg, host)  # before the database is touched
    run(_db(ctx), host, port, log=lambda line: click.echo(line, err=True))


@main.group()
def db():
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.pass_context
def db_upgrade(ctx, revision):
    """Apply migrations up to REVISION."""
    from miner.runtime.migrate import current_revision, upgrade

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
    from miner.runtime.migrate import current_revision, downgrade

    cfg = _config(ctx)
    if not yes:
        click.confirm(f"downgrade {mask_url(cfg.db_url)} to {revision}? Data in dropped tables is lost", abort=True)
    downgrade(cfg.db_url, revision)
    click.echo(f"database {mask_url(cfg.db_url)} at revision {current_revision(cfg.db_url) or 'base (empty)'}")


@db.command("current")
@click.pass_context
def db_current(ctx):
    """Print the schema revision of the database."""
    from miner.runtime.migrate import current_revision, head_revision

    cfg = _config(ctx)
    click.echo(f"{current_revision(cfg.db_url) or 'empty'} (head {head_revision()})")


@main.command()
@click.pass_context
def config(ctx):
    """Print the configuration in effect (passwords masked)."""
    from miner.io.storage import aws_settings

    for key, value in _config(ctx).masked().items():
        click.echo(f"{key}: {value}")
    for key, value in aws_settings().items():  # object storage (MINER_ARTIFACTS or inputs at s3://...)
        click.echo(f"{key}: {value}")


if __name__ == "__main__":
    main()
