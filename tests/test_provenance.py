"""Provenance (issue 17): sentence ids and metadata from input to export.

BUCC-style files (``ID<TAB>TEXT``) and JSONL are mined directly; the export carries the input ids
(``--with-ids``, JSONL always) and metadata; ``miner eval --gold-format ids`` matches BUCC id gold;
a text on several lines keeps every id; bad rows are skipped and counted or fail with the line."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_miner, start_workers, stop_workers, wait_for_workers

SAMPLE_DE, SAMPLE_EN, GOLD = (ROOT / "examples" / name for name in ("sample.de", "sample.en", "gold.tsv"))


# --------------------------------------------------------------------------- the reader


def read(path, fmt, **kwargs):
    from miner.io.reader import ReadStats
    from miner.io.records import RowParser, read_records

    stats = ReadStats()
    parse = None if fmt == "text" else RowParser(fmt, path, stats=stats, **kwargs)
    return list(read_records(path, parse=parse, stats=stats)), stats


def test_tsv_rows_give_ids_text_and_metadata(tmp_path):
    path = tmp_path / "in.tsv"
    path.write_text("\ufeffa-1\tHallo  Welt\thttp://x/1\textra\n"
                    "a-2\tGuten Tag\thttp://x/2\n"
                    "a-3\tHallo Welt\thttp://x/3\n"  # the text of a-1 again: one sentence, two ids
                    "only-one-column\n"
                    "\tno id\thttp://x/5\n"
                    "a-2\tan id used twice\thttp://x/6\n"
                    "a-7\t   \n",
                    encoding="utf-8")
    records, stats = read(path, "tsv", columns="id,text,url")
    assert records == [
        (0, "Hallo Welt", "a-1", {"url": "http://x/1", "col4": "extra"}, None),
        (1, "Guten Tag", "a-2", {"url": "http://x/2"}, None),
        (2, "Hallo Welt", "a-3", {"url": "http://x/3"}, 0),
    ]
    assert stats.as_dict() == {"lines": 7, "sentences": 2, "blank": 1, "duplicates": 1, "too_long": 0,
                               "decode_errors": 0, "bad_rows": 3}
    # BUCC's two columns are the default; without an id column the id is the line number
    records, _ = read(path, "tsv", columns="text,id2")
    assert records[0][:3] == (0, "a-1", None)


def test_jsonl_rows_keep_every_other_field(tmp_path):
    from miner.io.records import display_id

    path = tmp_path / "in.jsonl"
    rows = [{"id": "d1", "text": "Eins", "url": "u1", "date": "2026-01-02", "tags": [1, 2]},
            {"text": "Zwei"},  # no id: its line number
            {"id": 7, "text": "Drei", "score": 0.5},
            "not an object", {"id": "d9"}, {"id": True, "text": "x"}, {"id": "d1", "text": "reused id"},
            {"id": "d10", "text": 5}]
    lines = [json.dumps(r, ensure_ascii=False) for r in rows] + ["{broken", '{"text": "NaN is not JSON", "v": NaN}']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    records, stats = read(path, "jsonl")
    assert [(r[0], r[1], r[2], r[3]) for r in records] == [
        (0, "Eins", "d1", {"url": "u1", "date": "2026-01-02", "tags": [1, 2]}),
        (1, "Zwei", None, None),
        (2, "Drei", "7", {"score": 0.5}),
    ]
    assert [display_id(r[2], r[0]) for r in records] == ["d1", "2", "7"]
    assert stats.bad_rows == 7 and stats.sentences == 3 and stats.lines == 10


@pytest.mark.parametrize("fmt, content, message", [
    ("tsv", "x-1\tgood\njust text\n", "in.txt: line 2: has 1 tab-separated column(s), expected at least 2"),
    ("tsv", "x-1\tgood\nx-1\tagain\n", "line 2: id 'x-1' was already used on line 1"),
    ("jsonl", '{"text": "ok"}\n{"text": \n', "line 2: is not valid JSON"),
    ("jsonl", '{"id": "a"}\n', "line 1: has no \"text\" string"),
])
def test_bad_rows_fail_with_the_line_number_under_fail(tmp_path, fmt, content, message):
    from miner.runtime.errors import InputFileError

    path = tmp_path / "in.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputFileError) as err:
        read(path, fmt, policy="fail")
    assert message in str(err.value) and "--on-bad-row skip" in str(err.value)


def test_format_auto_and_columns_checks(tmp_path):
    from miner.runtime.errors import UsageError
    from miner.io.records import looks_like_id_tsv, parse_columns, resolve_format

    assert resolve_format("auto", "a/b.jsonl") == resolve_format("auto", "b.JSONL.gz") == "jsonl"
    assert resolve_format("auto", "b.ndjson.xz") == "jsonl"
    assert resolve_format("auto", "b.tsv") == resolve_format("auto", "zh-en.sample.zh") == "text"
    assert resolve_format("tsv", "b.jsonl") == "tsv"
    assert parse_columns(None) == ["id", "text"] and parse_columns(" id, text ,url") == ["id", "text", "url"]
    for bad in ("id,url", "id,text,id", "id,te xt"):
        with pytest.raises(UsageError):
            parse_columns(bad)
    bucc = tmp_path / "bucc"
    bucc.write_text("".join(f"de-{i:09d}\tSatz {i}.\n" for i in range(1, 30)), encoding="utf-8")
    plain = tmp_path / "plain"
    plain.write_text("Ein Satz.\nNoch\tein Satz mit Tab.\n" * 5, encoding="utf-8")
    assert looks_like_id_tsv(bucc) and not looks_like_id_tsv(plain)


# --------------------------------------------------------------------------- end to end


def bucc_case(folder: Path, seed: int = 1) -> dict:
    """The README example as BUCC files (``de-#########<TAB>text``, ids in random order) with a
    metadata column, BUCC id gold, and two German sentences repeated on later lines under new ids."""
    folder.mkdir(parents=True, exist_ok=True)
    de, en = SAMPLE_DE.read_text().splitlines(), SAMPLE_EN.read_text().splitlines()
    rng = random.Random(seed)
    de_ids = [f"de-{n:09d}" for n in rng.sample(range(10 ** 8), len(de) + 2)]
    en_ids = [f"en-{n:09d}" for n in rng.sample(range(10 ** 8), len(en))]
    de_rows = list(zip(de_ids, de + [de[0], de[5]]))  # the last two repeat lines 1 and 6
    (folder / "de.tsv").write_text("".join(f"{i}\t{t}\tdoc{k % 7}\n" for k, (i, t) in enumerate(de_rows)),
                                   encoding="utf-8")
    (folder / "en.tsv").write_text("".join(f"{i}\t{t}\tdoc{k % 5}\n" for k, (i, t) in enumerate(zip(en_ids, en))),
                                   encoding="utf-8")
    first_id = {t: i for i, t in reversed(de_rows)}
    en_id = dict(zip(en, en_ids))
    gold = [line.split("\t") for line in GOLD.read_text().splitlines()]
    lines = [f"{first_id[s]}\t{en_id[t]}" for s, t in gold]
    repeated = {de[0]: de_ids[-2], de[5]: de_ids[-1]}
    lines += [f"{repeated[s]}\t{en_id[t]}" for s, t in gold if s in repeated]  # gold by the repeat's id
    (folder / "gold.ids").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"src": folder / "de.tsv", "tgt": folder / "en.tsv", "gold_ids": folder / "gold.ids",
            "repeated": repeated, "de": de, "de_ids": de_ids, "en_id": en_id, "first_id": first_id}


@pytest.fixture(scope="module")
def bucc_job(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("bucc")
    case = bucc_case(folder / "data")
    home, out = folder / "home", folder / "out.tsv"
    result = run_miner(home, "mine", case["src"], case["tgt"], "--src-lang", "de", "--tgt-lang", "en",
                       "--input-format", "tsv", "--columns", "id,text,doc", "--with-ids", "--header", "-q", "-o", out)
    return {"case": case, "home": home, "out": out, "result": result, "folder": folder}


def tsv_rows(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_bucc_files_are_mined_directly_with_ids_in_the_export(bucc_job):
    result, case = bucc_job["result"], bucc_job["case"]
    assert result.returncode == 0, result.stderr[-3000:]
    rows = tsv_rows(bucc_job["out"])
    assert rows[0] == ["score", "source", "target", "src_id", "tgt_id"]
    rows = rows[1:]
    assert len(rows) > 200
    de_to_ids: dict[str, list[str]] = {}
    for i, t in zip(case["de_ids"], case["de"] + [case["de"][0], case["de"][5]]):
        de_to_ids.setdefault(t, []).append(i)
    for score, src, tgt, src_id, tgt_id in rows:
        assert not src.startswith("de-") and not tgt.startswith("en-")  # ids are not part of the text
        assert src_id == ",".join(de_to_ids[src])  # every id of the sentence, in file order
        assert tgt_id == case["en_id"][tgt]
    repeated = [r for r in rows if r[1] in case["repeated"]]
    assert repeated and all("," in r[3] for r in repeated)
    status = json.loads(run_miner(bucc_job["home"], "status", "1", "--json").stdout)
    assert status["corpora"]["src"]["sentences"] == 300
    assert status["corpora"]["src"]["skipped"]["duplicates"] == 2


@pytest.mark.slow
def test_eval_with_bucc_id_gold_equals_text_gold(bucc_job):
    home, case = bucc_job["home"], bucc_job["case"]
    by_ids = run_miner(home, "eval", "1", "--gold", case["gold_ids"], "--json")
    by_text = run_miner(home, "eval", "1", "--gold", GOLD, "--json")
    assert by_ids.returncode == 0 and by_text.returncode == 0, by_ids.stderr + by_text.stderr
    ids, text = json.loads(by_ids.stdout), json.loads(by_text.stdout)
    assert ids["gold"]["format"] == "ids" and text["gold"]["format"] == "text"
    # the extra gold lines name repeated sentences by their later ids: the same pairs as text gold
    assert ids["gold"]["pairs"] == text["gold"]["pairs"] == 240 and ids["gold"]["unreachable"] == 0
    for key in ("at_threshold", "best"):
        assert ids[key] == text[key]
    assert ids["at_threshold"]["f1"] > 0.9


@pytest.mark.slow
def test_jsonl_export_carries_ids_and_metadata(bucc_job):
    home, folder = bucc_job["home"], bucc_job["folder"]
    out = folder / "pairs.jsonl"
    assert run_miner(home, "export", "1", "-o", out).returncode == 0
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    tsv = tsv_rows(bucc_job["out"])[1:]
    assert [(r["src"], r["tgt"], ",".join(r["src_ids"]), r["tgt_id"]) for r in records] == \
        [(s, t, a, b) for _, s, t, a, b in tsv]
    source_meta = {}
    for line in bucc_job["case"]["src"].read_text(encoding="utf-8").splitlines():
        ext_id, text, doc = line.split("\t")
        source_meta.setdefault(text, {"doc": doc})  # the first occurrence's
    for r in records:
        assert r["src_meta"] == source_meta[r["src"]] and set(r["tgt_meta"]) == {"doc"}
        assert r["src_id"] == r["src_ids"][0]

    # a JSONL input round trip: ids and any fields come back as they went in
    src_jsonl, tgt_jsonl = folder / "de.jsonl", folder / "en.jsonl"
    src_jsonl.write_text("".join(json.dumps({"id": f"s{i}", "text": t, "meta": {"n": i, "tags": ["a"]}},
                                            ensure_ascii=False) + "\n"
                                 for i, t in enumerate(bucc_job["case"]["de"][:60])), encoding="utf-8")
    english = [line.split("\t")[1] for line in GOLD.read_text().splitlines()][:60]
    tgt_jsonl.write_text("".join(json.dumps({"text": t, "url": f"http://e/{i}"}) + "\n"
                                 for i, t in enumerate(english)), encoding="utf-8")
    out = folder / "round.jsonl"
    result = run_miner(home, "mine", src_jsonl, tgt_jsonl, "--src-lang", "de", "--tgt-lang", "en", "--threshold", "1.0",
                       "-q", "-o", out)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) > 40
    for r in records:
        n = int(r["src_id"][1:])
        assert r["src_meta"] == {"meta": {"n": n, "tags": ["a"]}}
        assert r["tgt_id"] == str(r["tgt_line"]) and r["tgt_meta"] == {"url": f"http://e/{r['tgt_line'] - 1}"}

    # gold by these ids ("s12", which do not look like line numbers): `auto` finds them as ids
    src_id = {t: f"s{i}" for i, t in enumerate(bucc_job["case"]["de"][:60])}
    tgt_id = {t: str(i + 1) for i, t in enumerate(english)}
    pairs = [line.split("\t") for line in GOLD.read_text().splitlines()]
    gold = [f"{src_id[s]}\t{tgt_id[t]}" for s, t in pairs if s in src_id and t in tgt_id]
    assert len(gold) > 40
    (folder / "round.gold").write_text("\n".join(gold) + "\n", encoding="utf-8")
    job_id = result.stdout.strip().splitlines()[-1]
    got = json.loads(run_miner(home, "eval", job_id, "--gold", folder / "round.gold", "--json").stdout)
    assert got["gold"]["format"] == "ids" and got["gold"]["pairs"] == len(gold) and got["gold"]["unreachable"] == 0
    assert got["best"]["f1"] > 0.9


@pytest.mark.slow
def test_bad_rows_through_the_cli(tmp_path):
    home = tmp_path / "home"
    good = tmp_path / "good.tsv"
    good.write_text("".join(f"e{i}\t{line}\n" for i, line in enumerate(SAMPLE_EN.read_text().splitlines()[:80])),
                    encoding="utf-8")
    bad = tmp_path / "bad.tsv"
    lines = [f"d{i}\t{line}" for i, line in enumerate(SAMPLE_DE.read_text().splitlines()[:80])]
    lines[10] = "no tab on this line"
    lines[20] = "d3\tan id used before"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    common = ("--src-lang", "de", "--tgt-lang", "en", "--input-format", "tsv", "-q")
    failed = run_miner(home, "mine", bad, good, *common, "--on-bad-row", "fail", "-o", tmp_path / "x.tsv")
    assert failed.returncode == 3, failed.stderr
    assert "line 11: has 1 tab-separated column(s)" in failed.stderr and "Traceback" not in failed.stderr
    skipped = run_miner(home, "mine", bad, good, *common, "-o", tmp_path / "y.tsv")
    assert skipped.returncode == 0, skipped.stderr
    assert "78 sentences kept; skipped 2 bad rows" in skipped.stderr
    usage = run_miner(home, "mine", bad, good, "--src-lang", "de", "--tgt-lang", "en", "--input-format", "jsonl",
                      "--columns", "id,text", "-o", tmp_path / "z.tsv")
    assert usage.returncode == 2 and "--columns" in usage.stderr and "Traceback" not in usage.stderr
    nocol = run_miner(home, "mine", bad, good, *common, "--columns", "id,url", "-o", tmp_path / "z.tsv")
    assert nocol.returncode == 2 and "must name the text column" in nocol.stderr


@pytest.mark.slow
def test_cluster_run_equals_embedded_with_ids(bucc_job, tmp_path, cluster_env):
    """The same BUCC job on Redis + PostgreSQL with two workers and small shards: byte-identical
    export with ids, and the same eval against the id gold."""
    assert bucc_job["result"].returncode == 0
    case, home = bucc_job["case"], tmp_path / "home"
    assert run_miner(home, "db", "upgrade", **cluster_env).returncode == 0
    workers = start_workers(tmp_path, home, cluster_env, 2)
    out = tmp_path / "cluster.tsv"
    try:
        wait_for_workers(home, cluster_env, ["w0@test", "w1@test"])
        result = run_miner(home, "mine", case["src"], case["tgt"], "--src-lang", "de", "--tgt-lang", "en",
                           "--input-format", "tsv", "--columns", "id,text,doc", "--shard-size", "64",
                           "--with-ids", "--header", "-q", "-o", out, **cluster_env)
    finally:
        stop_workers(workers)
    assert result.returncode == 0, result.stderr[-3000:]
    cluster, embedded = tsv_rows(out), tsv_rows(bucc_job["out"])
    assert cluster[0] == embedded[0] and len(cluster) == len(embedded) > 200
    # the same pairs with the same ids; scores equal to float32 rounding (other shards, other sums)
    assert sorted(r[1:] for r in cluster[1:]) == sorted(r[1:] for r in embedded[1:])
    by_pair = {tuple(r[1:]): float(r[0]) for r in embedded[1:]}
    assert max(abs(float(r[0]) - by_pair[tuple(r[1:])]) for r in cluster[1:]) < 1e-5
    job_id = result.stdout.strip().splitlines()[-1]
    cluster_eval = json.loads(run_miner(home, "eval", job_id, "--gold", case["gold_ids"], "--json", **cluster_env).stdout)
    embedded_eval = json.loads(run_miner(bucc_job["home"], "eval", "1", "--gold", case["gold_ids"], "--json").stdout)
    assert cluster_eval["gold"] | {"path": None} == embedded_eval["gold"] | {"path": None}
    for key in ("at_threshold", "best"):
        got, want = cluster_eval[key], embedded_eval[key]
        assert got["threshold"] == pytest.approx(want["threshold"], abs=1e-5)
        assert {k: v for k, v in got.items() if k != "threshold"} == {k: v for k, v in want.items() if k != "threshold"}


def test_migration_0003_round_trip(home):
    """0002 -> 0003 keeps the sentences and adds ext_id, meta (NULL) and sentence_duplicates;
    0003 -> 0002 removes them and keeps the rows."""
    from miner.runtime.config import Config
    from miner.runtime.migrate import current_revision, downgrade, upgrade

    cfg = Config.from_env()
    cfg.ensure_dirs()
    upgrade(cfg.db_url, "0002")
    path = cfg.home / "miner.db"
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO corpora (id, key, sha256, path, state, n_sentences, stats, settings, heartbeat_at, "
                     "created_at) VALUES (1, 'k', 's', 'p', 'ready', 1, '{}', '{}', '2026-12-01', '2026-12-01')")
        conn.execute("INSERT INTO sentences (corpus_id, idx, line_no, text) VALUES (1, 0, 0, 'Hallo')")

    def tables():
        with sqlite3.connect(path) as conn:
            return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    upgrade(cfg.db_url, "0003")
    assert current_revision(cfg.db_url) == "0003" and "sentence_duplicates" in tables()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT idx, line_no, text, ext_id, meta FROM sentences").fetchall() == \
            [(0, 0, "Hallo", None, None)]
    downgrade(cfg.db_url, "0002")
    assert "sentence_duplicates" not in tables()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT * FROM sentences").fetchall() == [(1, 0, 0, "Hallo")]


def test_text_input_ids_are_line_numbers_and_repeats_keep_theirs(tmp_path):
    """Plain text: a repeated line is one sentence that keeps both line numbers (read_records)."""
    path = tmp_path / "plain.txt"
    path.write_text("Eins\nZwei\n\nEins\n", encoding="utf-8")
    records, stats = read(path, "text")
    assert records == [(0, "Eins", None, None, None), (1, "Zwei", None, None, None), (3, "Eins", None, None, 0)]
    assert stats.duplicates == 1 and stats.blank == 1
