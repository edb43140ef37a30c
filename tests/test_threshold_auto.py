"""``--threshold auto`` end to end (issue 10): how a job's cut is chosen (auto, a number, a calibrated
threshold), stored (``jobs.threshold_info``, ``candidates.probability``), shown (``status``,
``report``) and used (``export``, ``eval``). The estimator itself is tested in test_autocut.py."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine

from miner.runtime import defaults
from miner.faces.cli import main

from .conftest import DISTRACTORS, ROOT, TATOEBA, read_lines, run_miner, start_workers, stop_workers, no_crash

SAMPLE_DE, SAMPLE_EN, GOLD = (ROOT / "examples" / name for name in ("sample.de", "sample.en", "gold.tsv"))
FIT_COLOURS = ((0x3A, 0x3A, 0x3A), (0xE6, 0xAB, 0x02))  # miner.faces.report NULL_FIT_COLOUR, TRANSLATION_FIT_COLOUR


def test_migration_0002_round_trip(home):
    """0001 -> 0002 keeps the rows and adds jobs.threshold_info and candidates.probability (NULL);
    the schema then equals the models; 0002 -> 0001 drops both columns and keeps the rows."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from miner.runtime.config import Config
    from miner.runtime.db import Base
    from miner.runtime.migrate import current_revision, downgrade, upgrade

    cfg = Config.from_env()
    cfg.ensure_dirs()
    upgrade(cfg.db_url, "0001")
    path = cfg.home / "miner.db"
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO jobs (id, state, src_path, tgt_path, src_lang, tgt_lang, model, options, attempt, "
                     "created_at) VALUES (1, 'done', 'a', 'b', 'de', 'en', 'muse', '{\"threshold\": 1.05}', 1, "
                     "'2026-11-27 00:00:00')")
        conn.execute("INSERT INTO candidates (job_id, src_idx, tgt_idx, score, direction) VALUES (1, 0, 0, 1.2, 'both')")

    def columns(table):
        with sqlite3.connect(path) as conn:
            return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]

    assert "threshold_info" not in columns("jobs") and "probability" not in columns("candidates")
    upgrade(cfg.db_url, "0002")
    assert current_revision(cfg.db_url) == "0002"
    assert "threshold_info" in columns("jobs") and "probability" in columns("candidates")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT threshold_info, options FROM jobs").fetchall() == [(None, '{"threshold": 1.05}')]
        assert conn.execute("SELECT score, probability FROM candidates").fetchall() == [(1.2, None)]
    upgrade(cfg.db_url)  # the later revisions: then the schema is the models'
    engine = create_engine(cfg.db_url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    engine.dispose()
    downgrade(cfg.db_url, "0001")
    assert current_revision(cfg.db_url) == "0001"
    assert "threshold_info" not in columns("jobs") and "probability" not in columns("candidates")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT score, direction FROM candidates").fetchall() == [(1.2, "both")]
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(candidates)")}
    assert "ix_candidates_job_score" in indexes
    upgrade(cfg.db_url, "0002")
    assert current_revision(cfg.db_url) == "0002"


@pytest.mark.slow
def test_postgres_copy_stores_probabilities_and_threshold_info(postgres_server):
    """On PostgreSQL the candidates go in by COPY: the probability column with them (nan and a missing
    array as NULL); the threshold record is valid JSON there (no NaN: json_ready)."""
    import numpy as np
    from sqlalchemy import select

    from miner.pipeline import steps
    from miner.runtime.db import Candidate, Job, session_scope
    from miner.runtime.migrate import current_revision, head_revision, upgrade

    url = postgres_server.create_database("threshold_auto_copy")
    upgrade(url)
    assert current_revision(url) == head_revision()
    src, tgt = np.array([0, 1, 2]), np.array([2, 0, 1])
    scores, names = np.array([1.4, 1.2, 1.0]), np.array(["both", "fwd", "bwd"])
    info = steps.json_ready({"value": np.float64(1.1), "method": "auto", "share": float("nan"),
                             "density": {"x": np.array([1.0, 2.0]), "null": [np.float32(0.5), float("inf")]}})
    assert info == {"value": 1.1, "method": "auto", "share": None, "density": {"x": [1.0, 2.0], "null": [0.5, None]}}
    with session_scope(url) as s:
        jobs = [Job(state="done", src_path="a", tgt_path="b", src_lang="de", tgt_lang="en", model="muse",
                    options={}, threshold_info=info) for _ in range(2)]
        s.add_all(jobs)
        s.flush()
        first, second = (job.id for job in jobs)
        steps.store_candidates(s, first, src, tgt, scores, names, np.array([0.99, np.nan, 0.01]))
        steps.store_candidates(s, second, src, tgt, scores, names, None)
    with session_scope(url) as s:
        got = {job: s.execute(select(Candidate.src_idx, Candidate.probability).where(Candidate.job_id == job)
                              .order_by(Candidate.src_idx)).all() for job in (first, second)}
        assert s.get(Job, first).threshold_info == info
    assert [tuple(r) for r in got[first]] == [(0, 0.99), (1, None), (2, 0.01)]
    assert [tuple(r) for r in got[second]] == [(0, None), (1, None), (2, None)]
    check_sentence_lengths(url)


def check_sentence_lengths(url: str) -> None:
    """steps.sentence_lengths counts characters (not bytes) and follows the ids it is given."""
    import numpy as np

    from miner.pipeline import steps
    from miner.runtime.db import Corpus, Sentence, session_scope

    texts = ["Grüße aus Köln.", "中文句子", "a", "Ünïcödé ñ — “quotes”"]
    with session_scope(url) as s:
        corpus = Corpus(key="k" * 64, sha256="0" * 64, path="x", state="ready", n_sentences=len(texts))
        s.add(corpus)
        s.flush()
        s.add_all(Sentence(corpus_id=corpus.id, idx=i, line_no=i, text=t) for i, t in enumerate(texts))
        corpus_id = corpus.id
    got = steps.sentence_lengths(url, corpus_id, len(texts), np.array([3, 0, 1, 1, 2]))
    assert got.tolist() == [len(texts[i]) for i in (3, 0, 1, 1, 2)] == [20, 15, 4, 4, 1]


def test_sentence_lengths_on_sqlite(tmp_path):
    from miner.runtime.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'miner.db'}"
    upgrade(url)
    check_sentence_lengths(url)


# --------------------------------------------------------------------------- how a new job's cut is chosen


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    no_crash(result)
    return result


def submitted(*extra) -> int:
    result = invoke("submit", SAMPLE_DE, SAMPLE_EN, "--src-lang", "de", "--tgt-lang", "en", "--force", *extra)
    assert result.exit_code == 0, result.output
    return int(result.output.strip().splitlines()[-1])


def status_of(job: int) -> dict:
    result = invoke("status", job, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_new_jobs_choose_auto_fixed_or_calibrated(home):
    """No --threshold: auto, until `miner calibrate` stores a threshold for the model and margin,
    then that one; a number is fixed; an explicit auto beats the calibration. Before the job
    finishes, status shows the method and the value known so far (none for auto). The threshold
    does not enter the request key: the same files and options are the same job."""
    auto = submitted()
    assert status_of(auto)["threshold"] == {"value": None, "method": "auto"}
    options = status_of(auto)["options"]
    assert options["threshold"] is None and options["threshold_method"] == "auto"
    assert options["fallback_threshold"] == defaults.bundled_threshold("muse", "ratio")
    fixed = submitted("--threshold", "1.1")
    assert status_of(fixed)["threshold"] == {"value": 1.1, "method": "fixed"}
    assert status_of(submitted("--threshold", "-0.5"))["threshold"] == {"value": -0.5, "method": "fixed"}

    defaults.store_calibration("muse", "ratio", {"threshold": 1.2}, home=home)
    calibrated = submitted()
    assert status_of(calibrated)["threshold"] == {"value": 1.2, "method": "calibrated"}
    explicit = submitted("--threshold", "AUTO")
    assert status_of(explicit)["threshold"] == {"value": None, "method": "auto"}
    assert status_of(explicit)["options"]["fallback_threshold"] == 1.2  # the calibrated default
    assert status_of(submitted("--threshold", "1.1"))["threshold"]["method"] == "fixed"
    # Another margin has no calibration: auto.
    assert status_of(submitted("--margin", "distance"))["threshold"] == {"value": None, "method": "auto"}

    # The text status says how the threshold will be chosen.
    assert "threshold: auto (chosen when the job finishes)" in invoke("status", auto).output
    assert "threshold: 1.2 (calibrated)" in invoke("status", calibrated).output

    # Same files and options, another threshold: the same job (without --force).
    again = invoke("submit", SAMPLE_DE, SAMPLE_EN, "--src-lang", "de", "--tgt-lang", "en", "--threshold", "1.3")
    assert again.exit_code == 0 and "already mines these files" in again.output


@pytest.mark.parametrize("value", ["abc", "1.1.1", "nan", "inf", ""])
def test_bad_threshold_is_a_usage_error(home, value):
    result = invoke("submit", SAMPLE_DE, SAMPLE_EN, "--src-lang", "de", "--tgt-lang", "en", "--threshold", value)
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--threshold'" in result.output and "'auto'" in result.output


def test_help_says_what_wins_over_auto():
    for command in ("mine", "submit"):
        text = " ".join(invoke(command, "--help").output.split())
        assert "--threshold NUMBER|auto" in text
        assert "A number, a calibrated threshold and `export --min-score` take precedence over auto" in text
        assert "Keep pairs scoring >= this" in text
    assert "--with-probability" in invoke("mine", "--help").output
    export = invoke("export", "--help").output
    assert "--with-probability" in export and "--min-probability" in export


# --------------------------------------------------------------------------- finished jobs, through a real worker


def wait_done(home: Path, job: int, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = run_miner(home, "status", job, "--json", timeout=60)
        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        if status["state"] in ("done", "failed", "cancelled"):
            assert status["state"] == "done", status
            return status
        time.sleep(0.5)
    raise AssertionError(f"job {job} did not finish within {timeout}s")


@pytest.fixture(scope="module")
def sample_jobs(tmp_path_factory):
    """The example corpus (300 German, 400 English lines) mined by one `miner worker` process as four
    jobs: at the defaults (auto), with --threshold 1.1 (fixed), then -- once a calibrated muse/ratio
    threshold of 1.2 is stored -- at the defaults again (calibrated) and with an explicit auto."""
    folder = tmp_path_factory.mktemp("threshold_auto")
    home = folder / "home"

    def submit(*extra) -> int:
        result = run_miner(home, "submit", SAMPLE_DE, SAMPLE_EN, "--src-lang", "de", "--tgt-lang", "en", *extra)
        assert result.returncode == 0, result.stderr
        return int(result.stdout.strip().splitlines()[-1])

    workers = start_workers(folder, home, {}, 1)
    try:
        jobs = {"auto": submit(), "fixed": submit("--threshold", "1.1", "--force")}
        defaults.store_calibration("muse", "ratio", {"threshold": 1.2}, home=home)
        jobs["calibrated"] = submit("--force")
        jobs["explicit_auto"] = submit("--threshold", "auto", "--force")
        status = {name: wait_done(home, job) for name, job in jobs.items()}
    finally:
        stop_workers(workers)
    return {"home": home, "folder": folder, "jobs": jobs, "status": status}


def export_rows(home: Path, job: int, out: Path, *args: str) -> list[dict]:
    """The JSONL export of a job (full-precision scores) with ``args``; asserts success."""
    result = run_miner(home, "export", job, "-o", out, "--format", "jsonl", *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in read_lines(out)]


def db_rows(home: Path, job: int) -> tuple[dict | None, list]:
    """The job's threshold_info and its candidates' (score, probability), read from the database."""
    from sqlalchemy import select

    from miner.runtime.db import Candidate, Job

    engine = create_engine(f"sqlite:///{home / 'miner.db'}")
    try:
        with engine.connect() as conn:
            info = conn.execute(select(Job.threshold_info).where(Job.id == job)).scalar()
            rows = conn.execute(select(Candidate.score, Candidate.probability).where(Candidate.job_id == job)).all()
    finally:
        engine.dispose()
    return info, [tuple(row) for row in rows]


def check_coherent(home: Path, folder: Path, job: int, status: dict) -> tuple[float, list[dict]]:
    """The value status shows is the one export uses; the pairs are the candidates scoring >= it."""
    value = status["threshold"]["value"]
    assert isinstance(value, float)
    every = export_rows(home, job, folder / f"all-{job}.jsonl", "--min-score", "-1e9")
    default = export_rows(home, job, folder / f"default-{job}.jsonl")
    assert default == [row for row in every if row["score"] >= value]
    assert status["pairs"] == len(default) and status["candidates_stored"] == len(every)
    return value, every


@pytest.mark.slow
def test_default_job_is_auto_and_coherent(sample_jobs):
    home, folder, job = sample_jobs["home"], sample_jobs["folder"], sample_jobs["jobs"]["auto"]
    status = sample_jobs["status"]["auto"]
    threshold = status["threshold"]
    # auto, or -- if the estimator finds too little to go on here -- the fixed default, saying why.
    assert threshold["method"] in ("auto", "fallback"), threshold
    assert "density" not in threshold and "reason" in threshold
    assert status["options"]["threshold"] is None and status["options"]["threshold_method"] == "auto"
    value, every = check_coherent(home, folder, job, status)
    info, candidates = db_rows(home, job)
    assert info["value"] == value and info["method"] == threshold["method"]
    assert {k: v for k, v in info.items() if k != "density"} == threshold
    text = run_miner(home, "status", job).stdout
    assert f"pairs: {status['pairs']:,} at threshold {value:.4g} ({threshold['method']}" in text
    # The score step stored each sentence's decoy score (its best without its best candidate).
    import numpy as np

    from miner.io.artifacts import Artifacts, job_key, load_npz
    from miner.runtime.config import Config
    from miner.pipeline.jobs import get_job

    key = job_key(get_job(Config.from_env({"MINER_HOME": str(home)}), int(job)))
    for direction, n in (("fwd", 300), ("bwd", 400)):
        scores = load_npz(Artifacts(home / "artifacts").scores(key, direction, 0, n))
        assert scores["decoy"].shape == scores["scores"].shape == (n,) and np.isfinite(scores["decoy"]).all()
        assert np.median(scores["decoy"]) < np.median(scores["scores"])
    assert threshold["method"] != "auto" or threshold["decoys"] > 0

    probabilities = [p for _, p in candidates]
    with_p = export_rows(home, job, folder / "p.jsonl", "--with-probability", "--min-score", "-1e9")
    assert [{k: v for k, v in row.items() if k != "probability"} for row in with_p] == every
    if threshold["method"] == "fallback":
        assert threshold["reason"] and value == status["options"]["fallback_threshold"]
        assert all(p is None for p in probabilities) and all(row["probability"] is None for row in with_p)
        assert f"(fallback: {threshold['reason']})" in text
        return
    assert threshold["reason"] is None
    assert all(p is not None and 0 <= p <= 1 for p in probabilities)
    assert all(0 <= row["probability"] <= 1 for row in with_p)
    assert {"share", "precision"} <= set(threshold)
    # The evidence of the empirical null: the decoys it was estimated from, its median below the cut.
    assert threshold["decoys"] >= 50 and threshold["null_low"] < value
    assert 0 < threshold["null_share"] <= 1
    # TSV: the probability is a 4th column; --header names it.
    tsv = folder / "p.tsv"
    assert run_miner(home, "export", job, "-o", tsv, "--with-probability", "--header").returncode == 0
    lines = read_lines(tsv)
    assert lines[0] == "score\tsource\ttarget\tprobability" and len(lines) == status["pairs"] + 1
    assert all(0 <= float(line.split("\t")[3]) <= 1 for line in lines[1:])
    # --min-probability keeps the pairs at or above the score floor with at least that probability.
    values = sorted({row["probability"] for row in with_p})
    cut = values[len(values) // 2]
    at_threshold = [row for row in with_p if row["score"] >= value]
    for floor, rows in ((), at_threshold), (("--min-score", "-1e9"), with_p):
        filtered = run_miner(home, "export", job, "-o", folder / "likely.jsonl", "--with-probability",
                             "--min-probability", cut, *floor)
        assert filtered.returncode == 0, filtered.stderr
        likely = [json.loads(line) for line in read_lines(folder / "likely.jsonl")]
        assert likely == [row for row in rows if row["probability"] >= cut]
        assert f"min-probability {cut:g}: -{len(rows) - len(likely):,}" in filtered.stderr


@pytest.mark.slow
def test_the_same_job_gives_the_same_cut(sample_jobs):
    """Deterministic: an explicit auto (after a calibration was stored) on the same data cuts where
    the default auto job cut -- unless both fell back, each to its own fixed default."""
    auto, explicit = (sample_jobs["status"][name]["threshold"] for name in ("auto", "explicit_auto"))
    assert explicit["method"] == auto["method"]
    if auto["method"] == "auto":
        assert explicit["value"] == auto["value"]
        for key in ("share", "precision"):
            assert explicit.get(key) == auto.get(key)
    else:
        assert explicit["value"] == 1.2 and auto["value"] == defaults.bundled_threshold("muse", "ratio")
    check_coherent(sample_jobs["home"], sample_jobs["folder"], sample_jobs["jobs"]["explicit_auto"],
                   sample_jobs["status"]["explicit_auto"])


@pytest.mark.slow
@pytest.mark.parametrize("name, value", [("fixed", 1.1), ("calibrated", 1.2)])
def test_fixed_and_calibrated_jobs_use_their_number(sample_jobs, name, value):
    home, folder, job = sample_jobs["home"], sample_jobs["folder"], sample_jobs["jobs"][name]
    status = sample_jobs["status"][name]
    assert status["threshold"] == {"value": value, "method": name}
    _, every = check_coherent(home, folder, job, status)
    assert 0 < status["pairs"] < len(every)
    info, candidates = db_rows(home, job)
    assert info == {"value": value, "method": name} and all(p is None for _, p in candidates)
    assert f"at threshold {value:g} ({name})" in run_miner(home, "status", job).stdout
    # The probability column is there but empty; --min-probability says why it cannot filter.
    tsv = folder / f"{name}.tsv"
    assert run_miner(home, "export", job, "-o", tsv, "--with-probability").returncode == 0
    assert all(line.split("\t")[3] == "" for line in read_lines(tsv))
    result = run_miner(home, "export", job, "-o", folder / "none.tsv", "--min-probability", "0.5")
    assert result.returncode == 2
    assert result.stderr.strip() == (f"Error: job {job} has no estimated probabilities, so --min-probability cannot "
                                     f"filter: its threshold is {name} ({value}); only --threshold auto jobs estimate "
                                     "them; use --min-score instead")
    assert not (folder / "none.tsv").exists()


@pytest.mark.slow
def test_min_score_wins_over_the_jobs_threshold(sample_jobs):
    home, folder = sample_jobs["home"], sample_jobs["folder"]
    for name in ("auto", "fixed"):
        job = sample_jobs["jobs"][name]
        every = export_rows(home, job, folder / f"every-{name}.jsonl", "--min-score", "-1e9")
        for floor in (1.0, 1.3):
            got = export_rows(home, job, folder / f"floor-{name}.jsonl", "--min-score", str(floor))
            assert got == [row for row in every if row["score"] >= floor]


@pytest.mark.slow
def test_eval_and_report_use_the_jobs_threshold(sample_jobs, tmp_path):
    home = sample_jobs["home"]
    for name in ("auto", "fixed"):
        job, status = sample_jobs["jobs"][name], sample_jobs["status"][name]
        method, value = status["threshold"]["method"], status["threshold"]["value"]
        result = run_miner(home, "eval", job, "--gold", GOLD, "--json")
        assert result.returncode == 0, result.stderr
        got = json.loads(result.stdout)
        assert got["threshold"] == value and got["threshold_method"] == method
        assert got["at_threshold"]["exported"] == status["pairs"]
        text = run_miner(home, "eval", job, "--gold", GOLD).stdout
        assert f"<- job threshold ({method})" in text

        page = tmp_path / f"{name}.html"
        result = run_miner(home, "report", job, "-o", page)
        assert result.returncode == 0, result.stderr
        assert f"at or above {value:g} ({method})" in result.stderr
        html = page.read_text(encoding="utf-8")
        assert f"<tr><th>threshold method</th><td>{method} (" in html
        if method == "auto":
            assert "estimated share of translations among the candidates" in html
            assert "estimated precision at the threshold" in html
        fitted = fit_pixels(page.with_suffix(".png"))
        info, _ = db_rows(home, job)
        if "density" in info:
            assert fitted > 50, fitted
        else:
            assert fitted == 0


def fit_pixels(png: Path) -> int:
    """Pixels of the left panel (the histogram) close to the colour of the fitted translation curve."""
    import numpy as np
    from PIL import Image

    with Image.open(png) as im:
        image = np.asarray(im.convert("RGB")).astype(int)
    left = image[:, : image.shape[1] // 2]
    return int((np.abs(left - np.array(FIT_COLOURS[1])).sum(axis=2) < 40).sum())


def test_report_draws_the_fitted_parts(tmp_path):
    """A density grid in the threshold record is drawn over the histogram, scaled to candidates per
    bar; without one, nothing is."""
    import numpy as np

    from miner.faces import report

    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(1.03, 0.03, 900), rng.normal(1.45, 0.08, 100)])
    lengths = np.full(scores.size, 40.0)
    xs = np.linspace(0.9, 1.7, 200)

    def normal(mu, sd, n):
        return n * np.exp(-0.5 * ((xs - mu) / sd) ** 2) / (sd * np.sqrt(2 * np.pi))

    density = {"x": xs.tolist(), "null": normal(1.03, 0.03, 900).tolist(),
               "translation": normal(1.45, 0.08, 100).tolist()}
    with_fit = tmp_path / "fit.png"
    with_fit.write_bytes(report.draw(scores, lengths, lengths, 1.3, "fit", method="auto", density=density))
    without = tmp_path / "plain.png"
    without.write_bytes(report.draw(scores, lengths, lengths, 1.3, "plain", method="fixed"))
    assert fit_pixels(with_fit) > 200 and fit_pixels(without) == 0
    assert report.fitted_curves({"x": [1.0], "null": [1.0], "translation": [1.0]}) is None
    assert report.fitted_curves({"x": [1.0, 2.0], "null": [1.0, None], "translation": [0.0, 1.0]}) is not None
    assert report.fitted_curves(None) is None and report.fitted_curves({"x": "nope"}) is None


@pytest.mark.slow
def test_too_few_candidates_fall_back_with_one_warning(tmp_path):
    """Three sentence pairs: auto has too little to go on and falls back to the fixed default, with
    one warning line saying why; `mine --with-probability` writes an empty 4th column."""
    home = tmp_path / "home"
    src, tgt, out = tmp_path / "a.de", tmp_path / "b.en", tmp_path / "out.tsv"
    src.write_text("Ich habe Hunger.\nDer Hund schläft im Garten.\nDas ist gut.\n", encoding="utf-8")
    tgt.write_text("The dog is sleeping in the garden.\nI am hungry.\nThat is good.\n", encoding="utf-8")
    result = run_miner(home, "mine", src, tgt, "--src-lang", "de", "--tgt-lang", "en", "-q", "-o", out,
                       "--with-probability")
    assert result.returncode == 0, result.stderr[-3000:]
    job = int(result.stdout.strip().splitlines()[-1])
    fixed = defaults.bundled_threshold("muse", "ratio")
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, result.stderr
    assert warnings[0].startswith(f"warning: job {job}: automatic threshold fell back to the fixed default {fixed:g}: ")
    status = json.loads(run_miner(home, "status", job, "--json").stdout)
    threshold = status["threshold"]
    assert threshold["method"] == "fallback" and threshold["value"] == fixed and threshold["reason"]
    assert warnings[0].endswith(threshold["reason"])
    rows = [line.split("\t") for line in read_lines(out)]
    assert len(rows) == status["pairs"] and all(len(r) == 4 and r[3] == "" and float(r[0]) >= fixed for r in rows)
    text = run_miner(home, "status", job)
    assert f"(fallback: {threshold['reason']})" in text.stdout and warnings[0] in text.stderr


@pytest.mark.slow
def test_few_translations_keep_the_cut_with_one_warning(tmp_path):
    """40 translations among 500 German and 540 English sentences: auto still cuts (it finds more
    than half of them), but marks the cut uncertain and says so once, in `mine` and in `status`."""
    home = tmp_path / "home"
    src_lines = read_lines(TATOEBA / "tatoeba.deu-eng.deu")[:500]
    eng_lines = read_lines(TATOEBA / "tatoeba.deu-eng.eng")[:40]
    src, tgt, out = tmp_path / "a.de", tmp_path / "b.en", tmp_path / "out.tsv"
    src.write_text("\n".join(src_lines) + "\n", encoding="utf-8")
    tgt.write_text("\n".join(eng_lines + read_lines(DISTRACTORS)[:500]) + "\n", encoding="utf-8")
    result = run_miner(home, "mine", src, tgt, "--src-lang", "de", "--tgt-lang", "en", "-q", "-o", out)
    assert result.returncode == 0, result.stderr[-3000:]
    job = int(result.stdout.strip().splitlines()[-1])
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, result.stderr
    assert warnings[0].startswith(f"warning: job {job}: the automatic threshold is uncertain here (about ")
    threshold = json.loads(run_miner(home, "status", job, "--json").stdout)["threshold"]
    assert threshold["method"] == "auto" and threshold["uncertain"] is True and threshold["translations"] < 100
    gold = {(" ".join(s.split()), " ".join(t.split())) for s, t in zip(src_lines, eng_lines)}
    found = {tuple(line.split("\t")[1:]) for line in read_lines(out)}
    assert len(found & gold) >= 20, (len(found & gold), len(found))  # 25 of the 40, in 63 pairs
    assert warnings[0] in run_miner(home, "status", job).stderr
    # The dashboard's job page (`miner serve`) shows the same warning.
    from miner.faces.api import Service
    from miner.faces.dashboard import job_page
    from miner.runtime.config import Config

    from .conftest import miner_env

    page = job_page(Service(Config.from_env(miner_env(home))), job).body.decode()
    assert "<th>threshold warning</th>" in page and "the automatic threshold is uncertain here" in page


def test_retry_does_not_show_the_previous_runs_results(tmp_path, monkeypatch):
    """`retry` showed the previous run's cut (`threshold_info`), pair count and exit code while it
    ran; now the job reads as a queued auto job until its finish step decides again."""
    from miner.pipeline.jobs import job_status, reset_for_retry

    from .conftest import MINER_VARS
    from .quality_helpers import config, mine_in_process

    for var in MINER_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MINER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MINER_THREADS", "2")
    cfg = config()
    root = Path(__file__).resolve().parents[1] / "examples"
    job_id = mine_in_process(cfg, root / "sample.de", root / "sample.en", "de", threshold=None, threshold_method="auto",
                             fallback_threshold=1.05)
    done = job_status(cfg, job_id)
    assert done["state"] == "done" and done["pairs"] > 200 and done["threshold"]["method"] == "auto"
    from miner.runtime.db import Job, session_scope

    with session_scope(cfg.db_url) as s:  # as a run that failed after its finish had stored results
        job = s.get(Job, job_id)
        job.state, job.exit_code, job.error = "failed", 3, "ingest: something"
    reset_for_retry(cfg, job_id)
    again = job_status(cfg, job_id)
    assert again["state"] == "queued" and again["attempt"] == done["attempt"] + 1
    assert again["pairs"] is None and again["exit_code"] is None
    assert again["threshold"] == {"value": None, "method": "auto"}
    assert again["candidates_stored"] == done["candidates_stored"]  # replaced at the finish, not before
