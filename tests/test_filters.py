"""Export filters, formats and language codes on a real job (MUSE, in-process): Tatoeba German and
English plus a few hand-made pairs that each filter must catch. Every filter test shows a pair the
filter removes and one it keeps; the kept rows are checked against a predicate written here."""

from __future__ import annotations

import gzip
import os
import json
import random
import re

import click
import pytest
from click.testing import CliRunner

from miner.faces.cli import main
from miner.io.languages import is_known, language_warnings, normalise_code

from .conftest import DISTRACTORS, MINER_VARS, TATOEBA, read_lines, read_tsv, no_crash
from .quality_helpers import config, mine_in_process

pytestmark = pytest.mark.slow

# Hand-made pairs: (German side, English side).
IDENTICAL = ("Microsoft Windows 10 Home Edition", "Microsoft Windows 10 Home Edition")
ENGLISH_ON_GERMAN_SIDE = ("The weather is really nice today.", "The weather is really lovely today.")
DIGITS_WRONG = ("Der Zug nach Berlin fährt um 7 Uhr ab.", "The train to Berlin leaves at 9 o'clock.")
DIGITS_RIGHT = ("Das Auto kostet 25.000 Euro.", "The car costs 25,000 euros.")
DUPLICATE_A = ("Ich habe heute keine Zeit.", "I have no time today.")
DUPLICATE_B = ("Ich habe heute keine Zeit!", "I have no time today!")
CRAFTED = [IDENTICAL, ENGLISH_ON_GERMAN_SIDE, DIGITS_WRONG, DIGITS_RIGHT, DUPLICATE_A, DUPLICATE_B]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    folder = tmp_path_factory.mktemp("filters")
    de = read_lines(TATOEBA / "tatoeba.deu-eng.deu")[:300] + [d for d, _ in CRAFTED]
    en = read_lines(TATOEBA / "tatoeba.deu-eng.eng")[:300] + [e for _, e in CRAFTED] + read_lines(DISTRACTORS)[:300]
    random.Random(1).shuffle(en)
    src, tgt = folder / "src.de", folder / "tgt.en"
    src.write_text("".join(line + "\n" for line in de), encoding="utf-8")
    tgt.write_text("".join(line + "\n" for line in en), encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        for var in MINER_VARS:
            mp.delenv(var, raising=False)
        mp.setenv("MINER_HOME", str(folder / "home"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("MINER_THREADS", "2")
        cfg = config()
        job_id = mine_in_process(cfg, src, tgt, "de", "en")
        base = folder / "base.tsv"
        result = CliRunner().invoke(main, ["export", str(job_id), "-o", str(base)])
        assert result.exit_code == 0, result.output
        yield {"id": job_id, "cfg": cfg, "folder": folder, "src": src, "tgt": tgt, "base": read_tsv(base)}


def export(job, *args, name="out.tsv"):
    out = job["folder"] / name
    result = CliRunner().invoke(main, ["export", str(job["id"]), "-o", str(out), *args])
    assert result.exit_code == 0, result.output
    return out, result.output


def pairs(rows):
    return [(s, t) for _, s, t in rows]


def check_filter(job, args, removes, must_remove=(), must_keep=()):
    """Export with ``args``; the rows kept are the base rows minus those ``removes`` flags (in order),
    at least one is removed and one kept, and the named pairs are removed / kept."""
    out, stderr = export(job, *args)
    kept = read_tsv(out)
    want = [row for row in job["base"] if not removes(row)]
    assert pairs(kept) == pairs(want)
    assert 0 < len(kept) < len(job["base"]), (len(kept), len(job["base"]))
    assert set(must_remove) <= set(pairs(job["base"])), "a hand-made pair was not mined"
    assert not set(must_remove) & set(pairs(kept))
    assert set(must_keep) <= set(pairs(kept))
    removed = len(job["base"]) - len(kept)
    summary = [line for line in stderr.splitlines() if "filters:" in line]
    assert len(summary) == 1, stderr
    return removed, summary[0]


def letters(text):
    return re.sub(r"[\W_]", "", text.casefold())


def test_hand_made_pairs_are_mined(job):
    assert set(CRAFTED) - {DUPLICATE_A, DUPLICATE_B} <= set(pairs(job["base"]))
    assert {DUPLICATE_A, DUPLICATE_B} <= set(pairs(job["base"])) or \
        {(DUPLICATE_A[0], DUPLICATE_B[1]), (DUPLICATE_B[0], DUPLICATE_A[1])} <= set(pairs(job["base"]))


def test_max_score(job):
    scores = sorted(score for score, _, _ in job["base"])
    cut = scores[len(scores) // 2]
    top = max(job["base"])  # the best pair is above any cut below it
    removed, summary = check_filter(job, ["--max-score", str(cut)], lambda r: r[0] > cut,
                                    must_remove=[(top[1], top[2])])
    assert f"max-score {cut:g}: -{removed:,}" in summary


def test_min_and_max_length(job):
    shortest = min(pairs(job["base"]), key=lambda p: min(map(len, p)))
    longest = max(pairs(job["base"]), key=lambda p: max(map(len, p)))
    assert min(map(len, shortest)) < 12 and max(map(len, longest)) > 40
    removed, summary = check_filter(job, ["--min-length", "12"], lambda r: min(len(r[1]), len(r[2])) < 12,
                                    must_remove=[shortest], must_keep=[DIGITS_RIGHT])
    assert f"min-length 12: -{removed:,}" in summary
    removed, summary = check_filter(job, ["--max-length", "40"], lambda r: max(len(r[1]), len(r[2])) > 40,
                                    must_remove=[longest], must_keep=[DIGITS_RIGHT])
    assert f"max-length 40: -{removed:,}" in summary


def test_length_ratio(job):
    def off(row):
        a, b = len(row[1]), len(row[2])
        return max(a, b) / min(a, b) > 1.4

    examples = [r for r in job["base"] if off(r)]
    assert examples, "no pair with a length ratio over 1.4"
    removed, summary = check_filter(job, ["--max-length-ratio", "1.4"], off,
                                    must_remove=[(examples[0][1], examples[0][2])], must_keep=[DIGITS_RIGHT])
    assert removed == len(examples) and f"length-ratio 1.4: -{removed:,}" in summary


def test_identical(job):
    removed, summary = check_filter(job, ["--drop-identical"], lambda r: letters(r[1]) == letters(r[2]),
                                    must_remove=[IDENTICAL], must_keep=[ENGLISH_ON_GERMAN_SIDE, DIGITS_RIGHT])
    assert f"identical: -{removed:,}" in summary


def test_digit_mismatch(job):
    def numbers(text):
        return {re.sub(r"\D", "", n) for n in re.findall(r"\d+(?:[.,:h']\d+)*", text)}

    def mismatch(row):
        a, b = numbers(row[1]), numbers(row[2])
        return bool(a and b) and a != b

    removed, summary = check_filter(job, ["--drop-digit-mismatch"], mismatch,
                                    must_remove=[DIGITS_WRONG], must_keep=[DIGITS_RIGHT, ENGLISH_ON_GERMAN_SIDE])
    assert f"digits: -{removed:,}" in summary


def test_duplicates(job):
    base = pairs(job["base"])
    first = min(base.index(p) for p in base if letters(p[0]) == letters(DUPLICATE_A[0]))
    seen, dropped = set(), []
    for row in job["base"]:
        key = (letters(row[1]), letters(row[2]))
        dropped.append(key in seen)
        seen.add(key)
    flags = dict(zip(map(id, job["base"]), dropped))
    removed, summary = check_filter(job, ["--dedup"], lambda r: flags[id(r)],
                                    must_remove=[p for p in base if letters(p[0]) == letters(DUPLICATE_A[0])
                                                 and base.index(p) != first],
                                    must_keep=[base[first]])
    assert removed == 1 and "duplicates: -1" in summary


def test_langid_rejects_english_on_the_german_side(job):
    from miner.io.langid import LanguageChecker

    checker = LanguageChecker()
    assert not checker.is_language(ENGLISH_ON_GERMAN_SIDE[0], "de")
    assert checker.is_language(ENGLISH_ON_GERMAN_SIDE[1], "en")
    assert checker.is_language(DIGITS_RIGHT[0], "de")
    out, stderr = export(job, "--langid")
    kept = pairs(read_tsv(out))
    assert ENGLISH_ON_GERMAN_SIDE in pairs(job["base"]) and ENGLISH_ON_GERMAN_SIDE not in kept
    assert DIGITS_RIGHT in kept and DIGITS_WRONG in kept
    summary = next(line for line in stderr.splitlines() if "filters:" in line)
    removed = len(job["base"]) - len(kept)
    match = re.search(r"langid: -(\d+) \(src (\d+), tgt (\d+)\)", summary)
    assert match and int(match.group(1)) == removed and int(match.group(2)) >= 1, summary
    # Real Tatoeba pairs are almost all kept: at most 1% rejected.
    assert removed - 1 <= 0.01 * len(job["base"]), summary


def test_all_filters_one_summary_line(job):
    out, stderr = export(job, "--max-score", "1.9", "--min-length", "3", "--max-length", "200", "--max-length-ratio",
                         "3", "--drop-identical", "--drop-digit-mismatch", "--langid", "--dedup")
    lines = [line for line in stderr.splitlines() if "filters:" in line]
    assert len(lines) == 1
    line = lines[0]
    names = re.findall(r"; ([a-z-]+)(?: [0-9.]+)?: -", line)
    assert names == ["min-score", "max-score", "min-length", "max-length", "length-ratio", "identical", "digits",
                     "langid", "duplicates"], line
    counts = [int(n.replace(",", "")) for n in re.findall(r": -([\d,]+)", line)]
    total = int(re.search(r"filters: ([\d,]+) candidates", line).group(1).replace(",", ""))
    written = int(re.search(r"; ([\d,]+) written", line).group(1).replace(",", ""))
    assert written == len(read_tsv(out)) and total - sum(counts) == written


def test_no_filter_keeps_the_export_contract(job):
    """Without new options, `miner export` writes exactly what it wrote before: %.6f<TAB>src<TAB>tgt,
    best first, the job's threshold, no filter line."""
    from miner.io.export import export_pairs

    out, stderr = export(job, name="plain.tsv")
    assert "filters:" not in stderr
    assert stderr.strip().splitlines()[-1] == f"job {job['id']}: {len(job['base'])} pairs written to {out}"
    ref = job["folder"] / "ref.tsv"
    assert export_pairs(job["cfg"], job["id"], str(ref), fmt="tsv").written == len(job["base"])
    assert out.read_bytes() == ref.read_bytes()
    lines = out.read_text(encoding="utf-8").splitlines()
    assert all(re.fullmatch(r"\d+\.\d{6}\t[^\t]+\t[^\t]+", line) for line in lines)
    assert all(score >= 1.05 for score, _, _ in job["base"])
    result = CliRunner().invoke(main, ["export", str(job["id"]), "-o", "-", "--header", "--min-score", "1.3"])
    assert result.exit_code == 0
    body = result.output.split("\n")
    assert body[0] == "score\tsource\ttarget"
    assert len([line for line in body[1:] if line.count("\t") == 2]) == sum(1 for r in job["base"] if r[0] >= 1.3)


def test_formats(job):
    base = job["base"]
    # TSV.gz
    gz, _ = export(job, name="out.tsv.gz")
    with gzip.open(gz, "rt", encoding="utf-8") as fh:
        assert [tuple(line.split("\t")) for line in fh.read().splitlines()] == \
            [(f"{s:.6f}", a, b) for s, a, b in base]
    # JSONL: ids are 1-based line numbers of the input files
    jl, _ = export(job, name="out.jsonl")
    records = [json.loads(line) for line in jl.read_text(encoding="utf-8").splitlines()]
    assert [(r["src"], r["tgt"]) for r in records] == pairs(base)
    assert [round(r["score"], 6) for r in records] == [round(s, 6) for s, _, _ in base]
    src_lines, tgt_lines = read_lines(job["src"]), read_lines(job["tgt"])
    for r in records:
        assert " ".join(src_lines[r["src_line"] - 1].split()) == r["src"]
        assert " ".join(tgt_lines[r["tgt_line"] - 1].split()) == r["tgt"]
    jl_gz, _ = export(job, "--format", "jsonl", name="x.json.gz")
    with gzip.open(jl_gz, "rt", encoding="utf-8") as fh:
        assert [json.loads(line) for line in fh] == records
    # Moses: OUT.de and OUT.en, line-aligned
    prefix = job["folder"] / "corpus"
    result = CliRunner().invoke(main, ["export", str(job["id"]), "-o", str(prefix), "--format", "moses", "--langid"])
    assert result.exit_code == 0, result.output
    assert f"written to {prefix}.de and {prefix}.en" in result.output
    de, en = read_lines(prefix.with_name("corpus.de")), read_lines(prefix.with_name("corpus.en"))
    assert len(de) == len(en) > 0
    assert ENGLISH_ON_GERMAN_SIDE[0] not in de
    assert set(zip(de, en)) <= set(pairs(base))
    # Errors: --header is TSV only; Moses needs a file name
    for args in (["-o", str(jl), "--header"], ["-o", "-", "--format", "moses"]):
        result = CliRunner().invoke(main, ["export", str(job["id"]), *args])
        assert result.exit_code == 2 and result.output.startswith("Error: "), result.output
        no_crash(result)


def test_language_codes():
    assert normalise_code("deu") == normalise_code("ger") == normalise_code("DE") == "de"
    assert normalise_code("pt_BR") == "pt-br" and normalise_code("zho-Hant") == "zh-hant"
    assert normalise_code("gsw") == "gsw" and is_known("gsw") and is_known("yue") and is_known("eng")
    assert not is_known("xx") and language_warnings("xx", None, "muse")
    assert language_warnings("deu", frozenset({"de", "en"}), "muse") == []


def test_language_codes_from_langcodes():
    # ISO 639-2/T and /B and the usual individual languages map to ISO 639-1, suffix kept lower-case
    assert normalise_code("fre") == normalise_code("fra") == "fr" and normalise_code(" CHI_Hant ") == "zh-hant"
    assert normalise_code("cmn-TW") == "zh-tw" and normalise_code("arb") == "ar" and normalise_code("nob") == "nb"
    assert normalise_code("hbs") == "sh" and normalise_code("tgl") == "tl" and normalise_code("tl") == "tl"
    # other macrolanguage members, deprecated and unknown codes keep their own code
    assert normalise_code("gug") == "gug" and normalise_code("pbu") == "pbu" and normalise_code("iw") == "iw"
    assert normalise_code("xx_YY") == "xx-yy" and normalise_code("mol") == "mol"
    assert is_known("sh") and is_known("MUL") and is_known("und") and is_known("ger-AT") and is_known("zho_Hant")
    # deprecated codes, collections and the private-use range are not ISO 639-1/639-3
    assert not any(is_known(code) for code in ("iw", "mo", "mol", "sgn", "qaa", "", "1", "x"))
    assert language_warnings("cmn", frozenset({"zh", "en"}), "muse") == []
    assert language_warnings("qaa", None, "muse")[0].startswith("unknown language code 'qaa'")


def test_langid_codes_and_warnings():
    from miner.io.filters import FilterChain, FilterOptions
    from miner.io.langid import langid_label

    assert langid_label("deu") == langid_label("de") == langid_label("de-AT") == "de"
    assert langid_label("nob") == langid_label("nb") == "no"
    assert langid_label("spa") == "es" and langid_label("fra") == "fr" and langid_label("eng") == "en"
    assert langid_label("tlh") is None and langid_label("xx") is None
    warnings = []
    chain = FilterChain(FilterOptions(langid=True), "tlh", "eng", warn=warnings.append)
    assert warnings == ["language ID does not know 'tlh' (the job's src language); that side is not checked"]
    assert chain.keep("nuqneH", "Hello, how are you today?", 1.2)  # unknown side not checked
    assert not chain.keep("nuqneH", "Guten Tag, wie geht es Ihnen heute?", 1.2)  # German on the English side
    assert chain.langid_sides == {"src": 0, "tgt": 1}


def test_langid_labels_of_synonyms():
    from miner.io.langid import langid_label

    # the model's label for codes that langcodes treats as the same language
    assert langid_label("fil") == langid_label("tl") == langid_label("tgl") == "tl"
    assert langid_label("ki") == langid_label("kik") == "kik"
    assert langid_label("iw") == langid_label("heb") == "he" and langid_label("in") == "id"
    assert langid_label("jw") == "jv" and langid_label("mo") == langid_label("rum") == "ro"
    assert langid_label("nob-NO") == "no" and langid_label("cmn") == langid_label("zh-Hant") == "zh"
    assert langid_label("gug") == "gug" and langid_label("yue") == "yue"
    assert langid_label("sh") is None and langid_label("pbu") is None and langid_label("") is None


@pytest.mark.parametrize("command", ["eval", "calibrate", "report", "export"])
def test_help(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0 and "Usage: " in result.output


# --------------------------------------------------------------------------- closed pipes


def _miner_process(job, *args, stdout):
    """A real `miner ARGS` process on the job's MINER_HOME, its standard output going to ``stdout``."""
    import subprocess
    import sys

    from .conftest import miner_env

    env = miner_env(job["folder"] / "home", MINER_THREADS="2")
    return subprocess.Popen([sys.executable, "-m", "miner", *map(str, args)], stdout=stdout, stderr=subprocess.PIPE,
                            env=env, cwd=str(job["folder"]))


@pytest.mark.parametrize("command", ["export", "jobs"])
def test_writing_into_a_closed_pipe_ends_quietly(job, command):
    """`miner export JOB -o - | head`: the reader goes away; the command ends with 0 and says nothing.
    Here the pipe's read end is closed before the command writes, so every write meets a closed pipe."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    args = ["export", job["id"], "-o", "-"] if command == "export" else ["jobs"]
    proc = _miner_process(job, *args, stdout=write_end)
    os.close(write_end)
    _, stderr = proc.communicate(timeout=120)
    stderr = stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, stderr
    assert "Error" not in stderr and "Traceback" not in stderr and "Exception" not in stderr, stderr


def test_export_into_head_ends_quietly(job):
    """A reader that takes one line and exits (as `head -n 1`): exit 0, no message, the line is a pair."""
    import subprocess

    proc = _miner_process(job, "export", job["id"], "-o", "-", stdout=subprocess.PIPE)
    first = proc.stdout.readline().decode("utf-8")
    proc.stdout.close()
    proc.wait(timeout=120)
    stderr = proc.stderr.read().decode("utf-8", "replace")
    assert proc.returncode == 0, stderr
    assert "Error" not in stderr and "Traceback" not in stderr and "Exception" not in stderr, stderr
    score, source, target = first.rstrip("\n").split("\t")
    assert (float(score), source, target) == job["base"][0]


# --------------------------------------------------------------------------- mine writes as export does


@pytest.fixture
def mined_again(job):
    """Make `miner mine` on the job's files and options find the job (as it finds a job it mined
    itself: same request key), so that `mine` only exports, with no worker to start."""
    from sqlalchemy import update

    from miner.runtime.db import Job, session_scope
    from miner.embedding.encoders import resolve_model
    from miner.pipeline.jobs import JobOptions, request_key
    from miner.io.reader import file_digest

    options = JobOptions(src_lang="de", tgt_lang="en", model="muse", model_key=resolve_model("muse").key)
    key = request_key(file_digest(job["src"]), file_digest(job["tgt"]), options)
    with session_scope(job["cfg"].db_url) as s:
        s.execute(update(Job).where(Job.id == job["id"]).values(request_key=key))

    def mine(*args):
        result = CliRunner().invoke(main, ["mine", str(job["src"]), str(job["tgt"]), "--src-lang", "de", "--tgt-lang",
                                           "en", "--threshold", "1.05", "-q", *map(str, args)])
        assert f"job {job['id']} (done) already mines these files" in result.output, result.output
        return result

    return mine


def test_mine_writes_what_export_writes(job, mined_again):
    folder = job["folder"]
    # A .jsonl name gives JSONL, as with export.
    result = mined_again("-o", folder / "mined.jsonl")
    assert result.exit_code == 0, result.output
    exported, _ = export(job, name="exported.jsonl")
    records = [json.loads(line) for line in (folder / "mined.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["src"], r["tgt"]) for r in records] == pairs(job["base"])
    assert (folder / "mined.jsonl").read_bytes() == exported.read_bytes()
    # --format moses: two files named by the languages
    result = mined_again("-o", folder / "mined", "--format", "moses")
    assert result.exit_code == 0, result.output
    assert f"written to {folder / 'mined'}.de and {folder / 'mined'}.en" in result.output
    assert list(zip(read_lines(folder / "mined.de"), read_lines(folder / "mined.en"))) == pairs(job["base"])
    # A filter: --drop-identical removes the identical pair, with export's summary line
    result = mined_again("-o", folder / "mined.tsv", "--drop-identical")
    assert result.exit_code == 0, result.output
    kept = read_tsv(folder / "mined.tsv")
    assert IDENTICAL in pairs(job["base"]) and IDENTICAL not in pairs(kept)
    assert pairs(kept) == [p for p in pairs(job["base"]) if p != IDENTICAL]
    assert "filters:" in result.output and "identical: -1" in result.output
    # Bad output options are refused before anything is mined.
    for args in (["-o", "-", "--format", "moses"], ["-o", folder / "x.jsonl", "--header"]):
        result = CliRunner().invoke(main, ["mine", str(job["src"]), str(job["tgt"]), "--src-lang", "de",
                                           "--tgt-lang", "en", "--threshold", "1.05", *map(str, args)])
        assert result.exit_code == 2 and result.output.startswith("Error: "), result.output
        assert "already mines" not in result.output


def test_export_counts_read_as_english(job):
    """"1 pair", not "1 pairs"; "-" is standard output, not a file named "-"."""
    # The TSV's score is rounded to 6 decimals: the stored one may lie up to 5e-7 below it.
    top = job["base"][0][0] - 1e-6
    assert job["base"][1][0] < top
    out, stderr = export(job, "--min-score", repr(top), name="one.tsv")
    assert stderr.strip().splitlines()[-1] == f"job {job['id']}: 1 pair written to {out}"
    result = CliRunner().invoke(main, ["export", str(job["id"]), "-o", "-", "--min-score", repr(top)])
    assert result.exit_code == 0, result.output
    assert f"job {job['id']}: 1 pair written to standard output" in result.output


def test_export_to_devices_and_pipes_writes_in_place_and_a_full_disk_exits_1(job, tmp_path):
    """The export renamed a temporary file over its target: `-o /dev/full` replaced the device with
    a regular file (and "succeeded"), a named pipe's reader never saw a byte. A failed write (disk
    full, I/O error) exited 2, "bad options"; now 1 with one Error line."""
    import stat
    import threading

    full = CliRunner().invoke(main, ["export", str(job["id"]), "-o", "/dev/full"])
    assert full.exit_code == 1, full.output
    assert full.output.strip().splitlines()[-1] == "Error: cannot write /dev/full: No space left on device"
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
    null = CliRunner().invoke(main, ["export", str(job["id"]), "-o", "/dev/null"])
    assert null.exit_code == 0 and stat.S_ISCHR(os.stat("/dev/null").st_mode)
    fifo = tmp_path / "pairs.fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    piped = CliRunner().invoke(main, ["export", str(job["id"]), "-o", str(fifo)])
    reader.join(60)
    assert piped.exit_code == 0, piped.output
    plain, _ = export(job, name="plain-for-fifo.tsv")
    assert got == [plain.read_bytes()] and stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_an_os_error_without_a_file_name_is_one_line():
    """It escaped the CLI's error handling as a traceback."""
    from miner.faces.cli_options import MinerGroup

    @click.group(cls=MinerGroup)
    def group():
        pass

    @group.command()
    def boom():
        raise OSError(28, "No space left on device")

    result = CliRunner().invoke(group, ["boom"])
    assert result.exit_code == 1, result.output
    assert result.output.strip() == ("Error: No space left on device; check the paths given, their permissions and "
                                     "free space")
