"""The compute steps of a mining job, each a plain function of ids (no Celery here).

``corpora.ingest`` (per side) -> ``embed`` (per shard) -> ``build_index`` (per side) -> ``knn``
(per query shard, both directions) -> ``score`` (per query shard) -> ``finish`` (retrieval, the
job's cut, candidates). How a job moves from one stage to the next, and the leases, are in
:mod:`miner.pipeline.orchestration`; the array maths in :mod:`miner.core.mining` and :mod:`miner.core.indexes`.

Every step is idempotent: its output is an artifact written atomically under a key of what
determines it, or rows keyed uniquely in the database, and its completion is recorded once per
(job, stage, unit) in ``job_steps``. A re-run finds the output and only records it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
from sqlalchemy import delete, func, insert, select

from miner.core import indexes, mining
from miner.pipeline import corpora
from miner.io.artifacts import Artifacts, Location, artifacts_for, job_key
from miner.runtime.config import Config
from miner.runtime.db import Candidate, Job, JobState, Sentence, server_now, session_scope
from miner.runtime.errors import JobCancelled, MinerError, ModelError
from miner.pipeline.spec import job_spec
from miner.pipeline.stages import STAGES
from miner.pipeline import threshold as threshold_policy
from miner.pipeline.threshold import json_ready  # noqa: F401 - re-exported
from miner.pipeline.orchestration import (
    DIRECTIONS,
    Side,
    check_stop,
    ensure_active,
    job_sides,
    record_step,
    set_stage,
    shard_spans,
)

log = logging.getLogger(__name__)


_models: dict[tuple[str, bool], object] = {}
_models_lock = threading.Lock()


def model_for(cfg: Config, name: str, expected_key: str | None = None):
    """The loaded model ``name`` (one per worker process at a time; thread-safe, so a preload
    thread and the first embed task never load it twice). Keyed by the model's content
    (:attr:`ModelSpec.key`: a retrained model is loaded anew) and by the trust in effect
    (:func:`miner.embedding.encoders.trusting`), so a model loaded for a job that trusts its code is never
    reused for a job that does not.

    ``expected_key``: the key the job recorded at submit; a model whose content changed since
    raises :class:`ModelError` (its embeddings would be stored under the old model's key)."""
    from miner.embedding.encoders import load_model, resolve_model, trust_in_effect

    spec = resolve_model(name)
    if expected_key is not None and spec.key != expected_key:
        raise ModelError(f"model {name!r} changed since the job was submitted (it was {expected_key}, it is now "
                         f"{spec.key}); submit the job again (--force) to mine with the new model")
    key = (spec.key, trust_in_effect())
    with _models_lock:
        if key not in _models:
            _models.clear()
            _models[key] = load_model(spec, threads=cfg.threads or 1, device=cfg.device)
        return _models[key]


def warm_imports() -> None:
    """Import what the stages after embedding use (FAISS; SciPy for the automatic threshold), so a
    small job does not wait for them at its kNN and finish steps (``miner mine``'s workers call this
    in the background after preloading the model)."""
    import importlib

    for name in ("faiss", "scipy.special", "scipy.optimize", "scipy.stats"):
        try:
            importlib.import_module(name)
        except Exception as exc:  # the step that needs it reports it
            log.warning("could not import %s ahead of time: %s", name, exc)


def set_threads(threads: int) -> None:
    """The loaded model (if any) encodes with ``threads`` threads from now on."""
    from miner.embedding.encoders import set_threads as set_model_threads

    with _models_lock:
        for model in _models.values():
            set_model_threads(model, threads)


def _model(cfg: Config, job: Job):
    return model_for(cfg, job.model, expected_key=job_spec(job).model_key)


def _side_texts(cfg: Config, corpus_id: int, start: int, end: int) -> list[str]:
    with session_scope(cfg.db_url) as s:
        rows = s.execute(
            select(Sentence.text)
            .where(Sentence.corpus_id == corpus_id, Sentence.idx >= start, Sentence.idx < end)
            .order_by(Sentence.idx)
        ).all()
    return [r[0] for r in rows]


def side_index(job: Job, side: Side, dim: int | None = None):
    """The index spec that searches ``side`` (miner.core.indexes.choose_index on the job's options)."""
    from miner.core.indexes import choose_index

    o = job_spec(job)
    return choose_index(side.n, dim, o.index, o.nlist, o.nprobe)


def storage_dtype(job: Job, side: Side) -> str:
    """float16 or float32: how the side's embeddings are stored on disk."""
    storage = job_spec(job).storage
    if storage == "auto":
        return "float32" if side_index(job, side).exact else "float16"
    return storage


def knn_variant(job: Job, target: Side, dim: int | None = None) -> str:
    """What the kNN of a query shard depends on beyond k: the target's index and storage."""
    spec = side_index(job, target, dim)
    dtype = storage_dtype(job, target)
    # "gaps": missing IVF neighbours are stored as id -1 / -inf (older files held placeholders)
    parts = ([] if spec.exact else [spec.name, f"p{spec.nprobe}", "gaps"]) + ([] if dtype == "float32" else [dtype])
    if spec.kind == "ivfpq":
        parts.append(f"r{indexes.REFINE_FACTOR}")  # candidates re-scored with the stored vectors
    return "-".join(parts)


def _embeddings(art: Artifacts, job: Job, side: Side, start: int, end: int) -> Location:
    return art.embeddings(side.key, job_spec(job).model_key, start, end, storage_dtype(job, side))


def _shard_dim(art: Artifacts, job: Job, side: Side) -> int:
    first = shard_spans(side.n, job_spec(job).shard_size)[0]
    return int(art.load_npy(_embeddings(art, job, side, *first)).shape[1])


def embed(cfg: Config, job_id: int, side: str, start: int, end: int) -> str:
    """Embed sentences [start, end) of one side (skipped when the artifact exists)."""
    started = time.monotonic()
    job = ensure_active(cfg, job_id)
    corpus = job_sides(cfg, job)[side]
    art = artifacts_for(cfg)
    path = _embeddings(art, job, corpus, start, end)
    reused = art.exists(path)
    if not reused:
        from miner.embedding.encoders import encode

        # Sentences are encoded in blocks of one batch (MINER_EMBED_BATCH_SIZE) aligned on the side's sentence numbers, not
        # on the shard: a sentence's batch (its neighbours in it, the padding) and so its vector
        # are then the same whatever the shard size. A shard that starts or ends inside a block
        # encodes the whole block and keeps its part (at most two blocks more per shard).
        block = max(1, cfg.embed_batch_size)
        lo_all = start // block * block
        hi_all = min(corpus.n, -(-end // block) * block)
        texts = _side_texts(cfg, corpus.corpus_id, lo_all, hi_all)
        if len(texts) != hi_all - lo_all:
            raise MinerError(f"corpus {corpus.corpus_id} has {len(texts)} sentences in [{lo_all}, {hi_all}); "
                             f"re-ingest it")
        model = _model(cfg, job)
        parts = []
        for lo in range(0, len(texts), block):
            check_stop(job_id)  # a cancelled job stops within one block, not at the end of the shard
            parts.append(encode(model, texts[lo:lo + block], batch_size=block))
        vectors = np.concatenate(parts) if len(parts) > 1 else parts[0]
        vectors = vectors[start - lo_all:end - lo_all]
        art.save_npy(path, vectors.astype(storage_dtype(job, corpus), copy=False))
    record_step(cfg, job_id, "embed", f"{side}:{start}", end - start, reused, seconds=time.monotonic() - started)
    return str(path)


def build_index(cfg: Config, job_id: int, side: str) -> str:
    """Build what the other side's kNN searches: for an exact (flat) side, check its embedding
    shards and write the manifest that the search streams through -- no process ever holds a whole
    side; for an IVF side, train on a sample and add the shards one at a time (miner.core.indexes)."""
    started = time.monotonic()
    job = ensure_active(cfg, job_id)
    corpus = job_sides(cfg, job)[side]
    model_key = job_spec(job).model_key
    art = artifacts_for(cfg)
    dim = _shard_dim(art, job, corpus)
    spec = side_index(job, corpus, dim)
    spans = shard_spans(corpus.n, job_spec(job).shard_size)
    manifest = art.manifest(corpus.key, model_key, spec.name, storage_dtype(job, corpus))
    reused = art.exists(manifest)
    if not reused:
        shards = []
        for start, end in spans:
            shard_path = _embeddings(art, job, corpus, start, end)
            vectors = art.load_npy(shard_path)
            if vectors.shape != (end - start, dim):
                raise MinerError(f"{shard_path} has shape {vectors.shape}, expected ({end - start}, {dim}); "
                                 f"delete it and `miner retry {job_id}`")
            shards.append([start, end, art.relative(shard_path)])
        info = {"kind": spec.kind, "n": corpus.n, "dim": dim, "shards": shards}
        if not spec.exact:
            def load_all():
                for start, end in spans:
                    check_stop(job_id)
                    yield art.load_npy(_embeddings(art, job, corpus, start, end))

            train = indexes.training_sample(load_all(), corpus.n, indexes.train_size(spec, corpus.n))
            index = indexes.build_ivf(spec, dim, train, load_all())
            del train
            index_path = art.index(corpus.key, model_key, spec.name)
            import faiss

            with art.writing(index_path) as tmp:
                faiss.write_index(index, str(tmp))
            del index
            info.update(nlist=spec.nlist, m=spec.m, index=art.relative(index_path))
        art.write_text(manifest, json.dumps(info))
    record_step(cfg, job_id, "index", side, corpus.n, reused, seconds=time.monotonic() - started)
    return str(manifest)


_indexes: dict[str, object] = {}


def _load_index(path: Path, nprobe: int):
    """One built index per worker process at a time (kNN tasks of a direction share it)."""
    key = f"{path}:{nprobe}"
    if key not in _indexes:
        _indexes.clear()
        _indexes[key] = indexes.read_index(str(path), nprobe)
    return _indexes[key]


def _checked(job_id: int, blocks):
    for block in blocks:
        check_stop(job_id)
        yield block


def _target_blocks(art: Artifacts, manifest_path: Location):
    """``(offset, vectors)`` of every shard of a side (from its index manifest), memory-mapped one
    at a time (remote shards from their copies in the local cache)."""
    manifest = json.loads(art.read_text(manifest_path))
    for start, _end, relative in manifest["shards"]:
        yield start, art.load_npy(art.at(relative))


_maps: dict[str, list] = {}


def _mapped_blocks(art: Artifacts, manifest_path: Location) -> list:
    """Like :func:`_target_blocks`, but the memory maps stay open in this process for the next
    kNN task of the direction (one side at a time): re-scoring IVF-PQ candidates reads rows all
    over the side, and re-mapping the files for each query shard made every read a page fault."""
    key = str(manifest_path)
    if key not in _maps:
        _maps.clear()
        _maps[key] = list(_target_blocks(art, manifest_path))
    return _maps[key]


def knn(cfg: Config, job_id: int, direction: str, start: int, end: int) -> str:
    """k nearest neighbours of query shard [start, end) in the other side: its shards streamed
    through an exact search, or its IVF index."""
    started = time.monotonic()
    job = ensure_active(cfg, job_id)
    sides = job_sides(cfg, job)
    query, target = (sides[name] for name in DIRECTIONS[direction])
    model_key = job_spec(job).model_key
    k = min(job_spec(job).k, target.n)
    art = artifacts_for(cfg)
    path = _knn_path(art, job, query, target, k, start, end)
    reused = art.exists(path)
    if not reused:
        queries = np.asarray(art.load_npy(_embeddings(art, job, query, start, end), mmap=False), dtype=np.float32)
        spec = side_index(job, target, queries.shape[1])
        manifest = art.manifest(target.key, model_key, spec.name, storage_dtype(job, target))
        if spec.exact:
            sims, ids = mining.knn_blocks(queries, _checked(job_id, _target_blocks(art, manifest)), k)
        else:
            info = json.loads(art.read_text(manifest))
            index = art.opened(art.at(info["index"]), lambda path: _load_index(path, spec.nprobe))
            blocks = _mapped_blocks(art, manifest) if spec.kind == "ivfpq" else None
            sims, ids = indexes.search_side(index, spec, queries, k, blocks)
            sims, ids = indexes.mark_missing(sims, ids)  # missing neighbours: id -1, similarity -inf
        art.save_npz(path, sims=sims, ids=ids)
    record_step(cfg, job_id, "knn", f"{direction}:{start}", end - start, reused, seconds=time.monotonic() - started)
    return str(path)


def _knn_path(art: Artifacts, job: Job, query: Side, target: Side, k: int, start: int, end: int) -> Location:
    dim = None if side_index(job, target).kind != "ivfpq" else _shard_dim(art, job, target)
    return art.knn(query.key, target.key, job_spec(job).model_key, k, start, end, knn_variant(job, target, dim))


def _side_means(cfg: Config, job: Job, direction: str, sides: dict[str, Side]) -> np.ndarray:
    """Mean kNN similarity of every sentence of the query side of ``direction``: computed once from
    all of the direction's kNN shards and stored beside them (keyed like them, so jobs that share
    the neighbours share the means); every later score task loads one file, not every shard."""
    query, target = (sides[name] for name in DIRECTIONS[direction])
    k = min(job_spec(job).k, target.n)
    art = artifacts_for(cfg)
    spans = shard_spans(query.n, job_spec(job).shard_size)
    if not spans:
        return np.empty(0)
    first = _knn_path(art, job, query, target, k, *spans[0])
    path = art.beside(first, f"means-{spans[0][1]:010d}-{query.n:010d}.npy")  # shard size and side size
    if art.exists(path):
        return np.array(art.load_npy(path, mmap=False))
    means = np.concatenate([mining.knn_mean(art.load_npz(_knn_path(art, job, query, target, k, s, e))["sims"])
                            for s, e in spans])
    art.save_npy(path, means)
    return means


def score(cfg: Config, job_id: int, direction: str, start: int, end: int) -> str:
    """Best margin candidate of each query in shard [start, end), and its decoy score (the best
    score without that candidate; :func:`miner.core.mining.best_candidates_with_decoy`, for
    ``--threshold auto``)."""
    started = time.monotonic()
    job = ensure_active(cfg, job_id)
    sides = job_sides(cfg, job)
    query, target = (sides[name] for name in DIRECTIONS[direction])
    k = min(job_spec(job).k, target.n)
    art = artifacts_for(cfg)
    path = art.scores(job_key(job), direction, start, end)
    reused = art.exists(path)
    if not reused:
        shard = art.load_npz(_knn_path(art, job, query, target, k, start, end))
        other = "bwd" if direction == "fwd" else "fwd"
        target_mean = _side_means(cfg, job, other, sides)
        best, scores, decoy = mining.best_candidates_with_decoy(
            shard["sims"], shard["ids"], mining.knn_mean(shard["sims"]), target_mean, job_spec(job).margin
        )
        art.save_npz(path, ids=best, scores=scores, decoy=decoy)
    record_step(cfg, job_id, "score", f"{direction}:{start}", end - start, reused, seconds=time.monotonic() - started)
    return str(path)


# --------------------------------------------------------------------------- finish


def _best(cfg: Config, job: Job, direction: str, side: Side) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(best ids, best scores, decoy scores) of every sentence of ``side``; the decoys are None
    when a score artifact predates them."""
    art = artifacts_for(cfg)
    parts = [art.load_npz(art.scores(job_key(job), direction, s, e)) for s, e in shard_spans(side.n, job_spec(job).shard_size)]
    decoy = np.concatenate([p["decoy"] for p in parts]) if all("decoy" in p for p in parts) else None
    return np.concatenate([p["ids"] for p in parts]), np.concatenate([p["scores"] for p in parts]), decoy


CANDIDATE_BATCH = 20000


def store_candidates(s, job_id: int, src: np.ndarray, tgt: np.ndarray, scores: np.ndarray, names: np.ndarray,
                     probability: np.ndarray | None = None) -> None:
    """Insert candidate rows in the session's transaction: COPY on PostgreSQL, batched executemany
    elsewhere; either way at most ``CANDIDATE_BATCH`` Python rows exist at a time. ``probability``
    (one per candidate; nan stored as NULL) or None (all NULL)."""
    def probabilities(lo: int, hi: int) -> list:
        if probability is None:
            return [None] * len(src[lo:hi])
        return [None if p != p else p for p in probability[lo:hi].tolist()]  # nan -> NULL

    if s.get_bind().dialect.name == "postgresql":
        raw = s.connection().connection.driver_connection  # the psycopg connection of this transaction
        with raw.cursor() as cursor, cursor.copy(
            "COPY candidates (job_id, src_idx, tgt_idx, score, direction, probability) FROM STDIN"
        ) as copy:
            for lo in range(0, len(src), CANDIDATE_BATCH):
                hi = lo + CANDIDATE_BATCH
                for row in zip(src[lo:hi].tolist(), tgt[lo:hi].tolist(), scores[lo:hi].tolist(), names[lo:hi].tolist(),
                               probabilities(lo, hi)):
                    copy.write_row((job_id, *row))
        return
    for lo in range(0, len(src), CANDIDATE_BATCH):
        hi = lo + CANDIDATE_BATCH
        rows = [
            {"job_id": job_id, "src_idx": int(a), "tgt_idx": int(b), "score": float(c), "direction": str(d),
             "probability": p}
            for a, b, c, d, p in zip(src[lo:hi].tolist(), tgt[lo:hi].tolist(), scores[lo:hi].tolist(), names[lo:hi],
                                     probabilities(lo, hi))
        ]
        s.execute(insert(Candidate), rows)


def sentence_lengths(db_url: str, corpus_id: int, n: int, ids: np.ndarray) -> np.ndarray:
    """Characters of the sentences ``ids`` of a corpus of ``n`` sentences (the stored,
    whitespace-normalised text, as the export's length filters count them), from one streamed
    pass over the corpus' (index, length) rows."""
    lengths = np.zeros(n, dtype=np.int64)
    with session_scope(db_url) as s:
        query = select(Sentence.idx, func.length(Sentence.text)).where(Sentence.corpus_id == corpus_id)
        for part in s.execute(query.execution_options(yield_per=50_000)).partitions():
            rows = np.asarray(part, dtype=np.int64).reshape(-1, 2)
            inside = rows[:, 0] < n
            lengths[rows[inside, 0]] = rows[inside, 1]
    return lengths[np.asarray(ids, dtype=np.int64)]


def finish(cfg: Config, job_id: int) -> int:
    """Apply the retrieval mode, choose the job's cut (:func:`miner.pipeline.threshold.decide`) and store the
    candidates with their probabilities (replacing any earlier ones) and the cut's record."""
    started = time.monotonic()
    job = ensure_active(cfg, job_id)
    sides = job_sides(cfg, job)
    fwd_best, fwd_scores, fwd_decoy = _best(cfg, job, "fwd", sides["src"])
    bwd_best, bwd_scores, bwd_decoy = _best(cfg, job, "bwd", sides["tgt"])
    src, tgt, scores, direction = mining.retrieve(
        fwd_best, fwd_scores, bwd_best, bwd_scores, job_spec(job).retrieval, threshold=None
    )
    from miner.core.autocut import CutInputs

    inputs = CutInputs(scores=scores, direction=direction, src=src, tgt=tgt, fwd_scores=fwd_scores,
                       bwd_scores=bwd_scores, fwd_decoy=fwd_decoy, bwd_decoy=bwd_decoy)
    threshold, info, probability = threshold_policy.decide(job, inputs)
    above = int(np.count_nonzero(scores >= threshold)) if threshold is not None else len(scores)
    names = np.array(["", "fwd", "bwd", "both"])[direction]
    with session_scope(cfg.db_url) as s:
        # Lock the job row: a second delivery of this task waits, then replaces the same rows.
        job = s.scalar(select(Job).where(Job.id == job_id).with_for_update())
        s.execute(delete(Candidate).where(Candidate.job_id == job_id))
        store_candidates(s, job_id, src, tgt, scores, names, probability)
        if job.state == JobState.CANCELLED.value:
            raise JobCancelled(f"job {job_id} was cancelled")
        job.n_candidates = above
        job.threshold_info = info
        job.state = JobState.DONE.value
        job.finished_at = server_now(s)
        job.error = None
    message = threshold_policy.threshold_warning(job_id, info)
    if message:
        log.warning("%s", message)
    set_stage(cfg, job_id, "finish", {"all": (1, len(src))})
    record_step(cfg, job_id, "finish", "all", len(src), seconds=time.monotonic() - started)
    return above


#: The function that runs one unit of each stage (``fn(cfg, job_id, *unit_args)``), from the
#: stages' declarations (miner/pipeline/stages.py).
STEP_FUNCTIONS = {stage.name: stage.function() for stage in STAGES}
