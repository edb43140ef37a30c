"""Jobs as the CLI and the HTTP API see them: submit (check the inputs, resolve the options, create
the row or find the live job with the same request), look up, list, cancel, retry. The status
that ``miner status`` shows is read by :mod:`miner.pipeline.status` (re-exported here). It writes
the jobs table (create, cancel, retry); the pipeline's progress is written by
:mod:`miner.pipeline.orchestration` and the steps. Threshold policy is in
:mod:`miner.pipeline.threshold`, the options in :mod:`miner.pipeline.spec`."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import delete, func, select

from miner.runtime.config import Config
from miner.runtime.db import LIVE_STATES, Job, JobState, JobStep, server_now, session_scope
from miner.runtime.errors import JobNotFound, JobStateError, UsageError
from miner.pipeline.orchestration import load_job
from miner.pipeline.status import _iso, job_status, latest_job_id, stalled  # noqa: F401 - re-exported
from miner.pipeline.spec import FORMAT_OPTIONS, REQUEST_OPTIONS, THRESHOLD_METHODS, JobOptions  # noqa: F401 - re-exported
from miner.pipeline.threshold import (choose_method, effective_threshold, fallback_warning, threshold_method,  # noqa: F401
                             threshold_note, threshold_status)


def request_key(src_sha256: str, tgt_sha256: str, options: JobOptions, formats: tuple[str, str] | None = None) -> str:
    """What makes two submissions the same job: both files' contents and the options that change results
    (``formats``: how each side is read, :func:`miner.io.records.resolve_format`)."""
    import hashlib
    import json

    data = {"src": src_sha256, "tgt": tgt_sha256, **{name: getattr(options, name) for name in REQUEST_OPTIONS}}
    if formats is not None and set(formats) != {"text"}:
        data["formats"] = list(formats)
        data.update({name: getattr(options, name) for name in FORMAT_OPTIONS})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def find_duplicate(cfg: Config, key: str) -> tuple[int, str] | None:
    """The latest job with this request key, preferring live or done ones: (id, state)."""
    with session_scope(cfg.db_url) as s:
        rows = s.execute(select(Job.id, Job.state).where(Job.request_key == key).order_by(Job.id.desc())).all()
    for job_id, state in rows:
        if state in ("queued", "running", "done"):
            return int(job_id), state
    return (int(rows[0][0]), rows[0][1]) if rows else None


def input_name(path: Path | str) -> str:
    """What a job stores for an input: a URL as given, a local path made absolute."""
    from miner.io.storage import is_url

    return path if is_url(path) else str(Path(path).absolute())


def _same_input(src: Path | str, tgt: Path | str) -> bool:
    from miner.io.storage import is_url

    if is_url(src) or is_url(tgt):
        return src == tgt
    return Path(src).resolve() == Path(tgt).resolve()


def create_job(cfg: Config, src: Path | str, tgt: Path | str, options: JobOptions, request_key: str | None = None) -> int:
    """Insert a job that does not take the request key as its live key (``--force``); its id."""
    return claim_job(cfg, src, tgt, options, request_key, exclusive=False)[0]


def claim_job(cfg: Config, src: Path | str, tgt: Path | str, options: JobOptions, request_key: str | None,
              exclusive: bool = True) -> tuple[int, bool]:
    """Insert the job; returns (id, False). ``exclusive`` (not --force): the job takes the request
    key as its live key, unique among queued and running jobs, so that of two identical submissions
    at the same moment one inserts and the other gets (id of that job, True) instead of a second
    job mining the same thing."""
    from sqlalchemy.exc import IntegrityError

    live = request_key if exclusive else None
    try:
        with session_scope(cfg.db_url) as s:
            job = Job(
                request_key=request_key,
                live_key=live,
                src_path=input_name(src),
                tgt_path=input_name(tgt),
                src_lang=options.src_lang,
                tgt_lang=options.tgt_lang,
                model=options.model,
                options=options.stored(),
                state=JobState.QUEUED.value,
            )
            s.add(job)
            s.flush()
            return job.id, False
    except IntegrityError:
        if live is None:
            raise
    with session_scope(cfg.db_url) as s:
        other = s.scalar(select(Job.id).where(Job.live_key == live, Job.state.in_(LIVE_STATES)))
    if other is None:  # it finished between the insert and this look: this submission is the next one
        return claim_job(cfg, src, tgt, options, request_key, exclusive)
    return int(other), True


get_job = load_job  # the job row, or JobNotFound


def cancel_job(cfg: Config, job_id: int) -> str:
    """Mark a job cancelled; its queued and running tasks stop at their next step. Returns the old state."""
    with session_scope(cfg.db_url) as s:
        job = s.get(Job, job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id}; `miner jobs` lists the jobs")
        old = job.state
        if JobState(old).finished and old != JobState.FAILED.value:
            return old
        job.state = JobState.CANCELLED.value
        job.finished_at = server_now(s)
        return old


def reset_for_retry(cfg: Config, job_id: int, force: bool = False) -> None:
    """Put a failed or cancelled job (with ``force``, also a done one) back in the queue; finished
    steps stay and are skipped, the candidates are replaced at the end."""
    from sqlalchemy.exc import IntegrityError

    try:
        _reset_for_retry(cfg, job_id, force, keep_key=True)
    except IntegrityError:  # an identical job was queued at the same moment: run beside it, as asked
        _reset_for_retry(cfg, job_id, force, keep_key=False)


def _reset_for_retry(cfg: Config, job_id: int, force: bool, keep_key: bool) -> None:
    with session_scope(cfg.db_url) as s:
        job = s.get(Job, job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id}; `miner jobs` lists the jobs")
        if job.state in (JobState.RUNNING.value, JobState.QUEUED.value) and not force:
            raise JobStateError(f"job {job_id} is {job.state}; cancel it first (`miner cancel {job_id}`) or pass --force")
        if job.state == JobState.DONE.value and not force:
            raise JobStateError(f"job {job_id} is done; pass --force to run its tasks again")
        if not keep_key:
            job.live_key = None  # another job mines the same request now; this one runs beside it, as asked
        job.state = JobState.QUEUED.value
        job.error = None
        job.finished_at = None
        job.dispatched = None
        job.attempt += 1
        # The previous run's results are not this run's: status showed its cut, pair count and exit
        # code while the retry ran (the candidates stay stored until the finish replaces them).
        job.threshold_info = None
        job.n_candidates = None
        job.exit_code = None
        # The finish is what completes the job: it runs again (a delivery of a recorded unit is dropped).
        s.execute(delete(JobStep).where(JobStep.job_id == job_id, JobStep.stage == "finish"))


def list_jobs(cfg: Config, limit: int = 50, state: str | None = None) -> list[dict]:
    """The latest ``limit`` jobs, newest first; ``state``: only the jobs in that state."""
    if state is not None and state not in {s.value for s in JobState}:
        raise UsageError(f"unknown job state {state!r}; use one of {', '.join(s.value for s in JobState)}")
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if state is not None:
        query = query.where(Job.state == state)
    from miner.runtime.db import JobLease

    with session_scope(cfg.db_url) as s:
        now = server_now(s)
        jobs = s.scalars(query).all()
        quiet = {}
        for j in jobs:
            if j.state != "running":
                continue
            marks = [j.started_at or j.created_at,
                     s.scalar(select(func.max(JobStep.finished_at)).where(JobStep.job_id == j.id)),
                     s.scalar(select(func.max(JobLease.heartbeat_at)).where(JobLease.job_id == j.id))]
            quiet[j.id] = (now - max(m for m in marks if m is not None)).total_seconds()
        return [
            {
                "id": j.id,
                "state": j.state,
                "stalled": quiet.get(j.id, 0.0) > 2 * cfg.lease_seconds,
                "src": j.src_path,
                "tgt": j.tgt_path,
                "langs": f"{j.src_lang}-{j.tgt_lang}",
                "model": j.model,
                "pairs": j.n_candidates,
                "created_at": _iso(j.created_at),
                "error": j.error,
            }
            for j in jobs
        ]


def prepare_job(cfg: Config, src: Path, tgt: Path, *, warn, open_db, **opts) -> tuple[int, bool]:
    """Check inputs and options (``opts``: those of ``miner mine`` / ``submit``), then create the job
    row in the database that ``open_db()`` returns the configuration of (brought up to date first).
    ``warn(message)`` prints a warning. Returns the new job's (id, False). Returns (job id, False); or, when a
    queued, running or done job already has the same inputs (by content) and options and
    ``--force`` is not given, (that job's id, True)."""
    from miner.embedding.encoders import check_trust, resolve_model
    from miner.io.languages import language_warnings, normalise_code
    from miner.io.reader import check_input_file
    from miner.io.storage import check_store, is_url

    from miner.io.inputs import check_input_formats, check_sentence_counts, spool

    src, tgt = (spool(cfg, path, side, warn) for path, side in ((src, "source"), (tgt, "target")))
    for path in (src, tgt):
        check_input_file(path)
    check_sentence_counts(src, tgt, int(opts["k"]))
    if _same_input(src, tgt):
        warn(f"the same file is given for both sides ({src}); every sentence will pair with itself")
    spec = resolve_model(opts["model"])
    # An explicit answer wins (false included); MINER_TRUST_REMOTE_CODE is the default of a job
    # that does not say. (The HTTP API always says: there the server's setting is a ceiling.)
    asked = opts.get("trust_remote_code")
    trust = bool(cfg.trust_remote_code if asked is None else asked)
    check_trust(spec, trust)  # a local model that needs its own code fails here, not in a worker
    for side in ("src_lang", "tgt_lang"):
        for message in language_warnings(opts[side], spec.languages, opts["model"]):
            warn(message)
    from miner.io.inputs import side_language_warning

    for side, path, other in (("src", src, "tgt_lang"), ("tgt", tgt, "src_lang")):
        message = side_language_warning(path, opts[f"{side}_lang"], side, opts[other])
        if message:
            warn(message)
    method, threshold, fallback = choose_method(spec, opts["margin"], opts["threshold"], cfg.home)
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
        input_format=opts.get("input_format") or "auto",
        columns=opts.get("columns"),
        on_bad_row=opts.get("on_bad_row") or "skip",
    )
    check_input_formats(src, tgt, options, warn)
    if is_url(cfg.artifacts):  # a missing bucket, denied access or an endpoint down: one line now, not in a worker
        check_store(cfg.artifacts)
    cfg = open_db()
    from miner.io.reader import file_digest
    from miner.io.records import resolve_format

    formats = (resolve_format(options.input_format, src), resolve_format(options.input_format, tgt))
    key = request_key(file_digest(src), file_digest(tgt), options, formats)
    duplicate = find_duplicate(cfg, key)
    if duplicate is not None:
        other, state = duplicate
        if state in ("queued", "running", "done") and not opts.get("force"):
            warn(f"job {other} ({state}) already mines these files (same content) with these options; "
                 f"using it (--force mines again)")
            return other, True
        if state in ("failed", "cancelled") and not opts.get("force"):
            warn(f"job {other} with the same files and options is {state}; `miner retry {other}` resumes it")
    job_id, raced = claim_job(cfg, src, tgt, options, key, exclusive=not opts.get("force"))
    if raced:
        warn(f"job {job_id} (submitted at the same moment) already mines these files with these options; "
             f"using it (--force mines again)")
    return job_id, raced
