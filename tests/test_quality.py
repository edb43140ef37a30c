"""`miner eval`, `miner calibrate` and `miner report` on the Tatoeba deu/fra/spa cases (tests/data) with
5,000 English distractors each, mined once per language in-process with the real MUSE model.

Every figure `miner eval` prints is recomputed here from `miner export` output and the Tatoeba
files alone (text pairs, not the ids `eval` reads)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from miner.runtime import defaults
from miner.faces.cli import main

from .conftest import MINER_VARS, read_tsv, no_crash
from .quality_helpers import config, mine_in_process, tatoeba_case

pytestmark = pytest.mark.slow

LANGS = {"deu": "de", "fra": "fr", "spa": "es"}


@pytest.fixture(scope="module")
def tatoeba(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quality")
    with pytest.MonkeyPatch.context() as mp:
        for var in MINER_VARS:
            mp.delenv(var, raising=False)
        mp.setenv("MINER_HOME", str(folder / "home"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("MINER_THREADS", "2")
        cfg = config()
        cases = {}
        for lang, code in LANGS.items():
            case = tatoeba_case(folder / lang, lang, 5000)
            case["job"] = mine_in_process(cfg, case["src"], case["tgt"], code, "en")
            cases[lang] = case
        yield {"cfg": cfg, "folder": folder, "cases": cases}


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    no_crash(result)
    return result


def all_candidates(tatoeba, lang) -> list[tuple[float, str, str]]:
    """Every stored candidate of the case's job, through `miner export` (JSONL: full-precision scores)
    with no score floor."""
    out = tatoeba["folder"] / f"all-{lang}.jsonl"
    result = invoke("export", tatoeba["cases"][lang]["job"], "-o", out, "--min-score", "-1e9")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    return [(r["score"], r["src"], r["tgt"]) for r in records]


def independent_prf(rows, gold: set, threshold: float) -> dict:
    """P/R/F1 of the pairs scoring >= threshold against gold text pairs, from scratch."""
    exported = [(s, t) for score, s, t in rows if score >= threshold]
    tp = len(set(exported) & gold)
    p = tp / len(exported) if exported else 0.0
    r = tp / len(gold)
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "exported": len(exported),
            "gold_found": tp}


def oracle_f1(rows, gold) -> float:
    return max(independent_prf(rows, gold, score)["f1"] for score in {score for score, _, _ in rows})


def same(a: dict, b: dict) -> None:
    for key in ("precision", "recall", "f1"):
        assert a[key] == pytest.approx(b[key], abs=1e-12), (key, a, b)
    assert a["exported"] == b["exported"] and a["gold_found"] == b["gold_found"], (a, b)


@pytest.mark.parametrize("lang", list(LANGS))
def test_eval_equals_independent_computation(tatoeba, lang):
    case = tatoeba["cases"][lang]
    result = invoke("eval", case["job"], "--gold", case["gold_ids"], "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)
    assert got["gold"]["format"] == "ids" and got["gold"]["pairs"] == len(case["gold_text"])
    rows = all_candidates(tatoeba, lang)
    assert got["candidates"] == len(rows)
    # At the job's threshold: the same as the pairs `miner export` writes by default.
    default_export = tatoeba["folder"] / f"default-{lang}.tsv"
    assert invoke("export", case["job"], "-o", default_export).exit_code == 0
    assert got["threshold"] == 1.05
    want = independent_prf(read_tsv(default_export), case["gold_text"], -1e9)
    same(got["at_threshold"], want)
    same(got["at_threshold"], independent_prf(rows, case["gold_text"], 1.05))
    # Across thresholds, and the best one is the oracle.
    for row in got["curve"]:
        same(row, independent_prf(rows, case["gold_text"], row["threshold"]))
    assert len(got["curve"]) >= 10
    same(got["best"], independent_prf(rows, case["gold_text"], got["best"]["threshold"]))
    assert got["best"]["f1"] == pytest.approx(oracle_f1(rows, case["gold_text"]), abs=1e-12)
    print(f"\n{lang}: at 1.05 P {got['at_threshold']['precision']:.4f} R {got['at_threshold']['recall']:.4f} "
          f"F1 {got['at_threshold']['f1']:.4f}; best {got['best']['threshold']:.4f} F1 {got['best']['f1']:.4f}")
    # The text gold, 0-based ids and BUCC-style prefixed ids give the same figures.
    zero = tatoeba["folder"] / f"{lang}.ids0"
    zero.write_text("".join(f"{s}\t{t}\n" for s, t in case["gold_lines"]), encoding="utf-8")
    bucc = tatoeba["folder"] / f"{lang}.bucc"
    bucc.write_text("".join(f"{LANGS[lang]}-{s + 1:06d}\ten-{t + 1:06d}\n" for s, t in case["gold_lines"]),
                    encoding="utf-8")
    for args in (["--gold", case["gold_txt"]], ["--gold", zero, "--id-base", "0"], ["--gold", bucc]):
        other = invoke("eval", case["job"], *args, "--json")
        assert other.exit_code == 0, other.output
        other = json.loads(other.output)
        same(other["at_threshold"], got["at_threshold"])
        assert other["best"] == got["best"]
    # The table for people.
    text = invoke("eval", case["job"], "--gold", case["gold_ids"])
    assert text.exit_code == 0
    assert "<- job threshold" in text.output and "<- best threshold" in text.output
    f1 = f"{100 * got['at_threshold']['f1']:6.2f}"
    assert re.search(rf"1\.0500 .*{re.escape(f1)} .*<- job threshold", text.output)


def test_sample_gold_judges_only_its_sources(tatoeba):
    """With --sample, pairs whose source is not in the gold are not judged: precision over the
    judged pairs, recall over the sample."""
    case = tatoeba["cases"]["deu"]
    sample = case["gold_lines"][:200]
    path = tatoeba["folder"] / "deu.sample"
    path.write_text("".join(f"{s + 1}\t{t + 1}\n" for s, t in sample), encoding="utf-8")
    got = json.loads(invoke("eval", case["job"], "--gold", path, "--sample", "--json").output)
    sources = {" ".join(case["src_lines"][s].split()) for s, _ in sample}
    gold = {(" ".join(case["src_lines"][s].split()), " ".join(case["tgt_lines"][t].split())) for s, t in sample}
    judged = [row for row in all_candidates(tatoeba, "deu") if row[1] in sources]
    same(got["at_threshold"], independent_prf(judged, gold, 1.05))
    assert got["gold"]["sample"] is True and got["at_threshold"]["exported"] <= 200
    # Without --sample the other 800 true pairs would count as false positives.
    full = json.loads(invoke("eval", case["job"], "--gold", path, "--json").output)
    assert full["at_threshold"]["precision"] < 0.25 < got["at_threshold"]["precision"]


def test_calibrate_muse_within_two_points_of_oracle(tatoeba):
    cases = tatoeba["cases"]
    jobs = [cases[lang]["job"] for lang in LANGS]
    # A calibration on deu alone, 3 decimals: stored, and used by the next job without --threshold.
    one = invoke("calibrate", cases["deu"]["job"], "--gold", cases["deu"]["gold_ids"], "--decimals", "3", "--json")
    assert one.exit_code == 0, one.output
    deu_only = json.loads(one.output)["threshold"]
    assert deu_only != defaults.bundled_threshold("muse", "ratio")
    assert defaults.default_threshold("muse", "ratio") == deu_only
    submitted = invoke("submit", cases["deu"]["src"], cases["deu"]["tgt"], "--src-lang", "deu", "--tgt-lang", "eng")
    assert submitted.exit_code == 0, submitted.output
    status = json.loads(invoke("status", submitted.output.strip().splitlines()[-1], "--json").output)
    assert status["threshold"] == {"value": deu_only, "method": "calibrated"}
    assert (status["src_lang"], status["tgt_lang"]) == ("de", "en")
    assert defaults.default_threshold("muse", "distance") == defaults.bundled_threshold("muse", "distance")

    # All three languages: one threshold for muse/ratio.
    args = [a for lang in LANGS for a in ("--gold", cases[lang]["gold_ids"] if lang != "spa" else cases[lang]["gold_txt"])]
    result = invoke("calibrate", *jobs, *args, "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)
    threshold = got["threshold"]
    assert (got["model"], got["margin"]) == ("muse", "ratio")
    assert defaults.default_threshold("muse", "ratio") == threshold
    stored = json.loads(Path(got["stored"]).read_text(encoding="utf-8"))
    assert stored["models"]["muse"]["ratio"]["threshold"] == threshold
    for lang in LANGS:
        rows = all_candidates(tatoeba, lang)
        at = independent_prf(rows, cases[lang]["gold_text"], threshold)["f1"]
        oracle = oracle_f1(rows, cases[lang]["gold_text"])
        print(f"\n{lang}: calibrated {threshold}: F1 {at:.4f}; oracle F1 {oracle:.4f}")
        assert oracle - at <= 0.02, (lang, at, oracle)
        entry = next(j for j in got["jobs"] if j["job"] == cases[lang]["job"])
        assert entry["at_recommended"]["f1"] == pytest.approx(at, abs=1e-12)
        assert entry["oracle"]["f1"] == pytest.approx(oracle, abs=1e-12)
    # The bundled muse/ratio default is what `miner calibrate` recommends on the same data (docs/quality.md).
    assert threshold == defaults.THRESHOLDS["muse"]["ratio"], "bundled default and calibration disagree"
    shown = invoke("calibrate", "--show")
    assert shown.exit_code == 0 and f"muse/ratio: {threshold}" in shown.output
    dry = invoke("calibrate", cases["deu"]["job"], "--gold", cases["deu"]["gold_ids"], "--decimals", "3", "--dry-run")
    assert dry.exit_code == 0 and "not stored" in dry.output
    assert defaults.default_threshold("muse", "ratio") == threshold


# --------------------------------------------------------------------------- report

ABOVE = (0x1B, 0x9E, 0x77)
BELOW = (0x8D, 0xA0, 0xCB)
LINE = (0xD6, 0x27, 0x28)


def colour_pixels(image: np.ndarray, rgb) -> int:
    return int(np.all(image[:, :, :3] == np.array(rgb, dtype=np.uint8), axis=2).sum())


def load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI"):
        pytest.fail("Chromium is not installed; .ci/run installs it with apt-get install chromium")
    pytest.skip("Chromium is not installed (apt-get install -y chromium)")


def open_in_chromium(page: Path, shot: Path) -> str:
    """Load the page in headless Chromium, screenshot it; returns the browser's console lines."""
    proc = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr",
         "--v=0", "--window-size=1280,1800", f"--screenshot={shot}", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    return "\n".join(line for line in proc.stderr.splitlines() if ":CONSOLE" in line)


def test_report_html_and_png(tatoeba, tmp_path):
    case = tatoeba["cases"]["deu"]
    out = tmp_path / "report.html"
    result = invoke("report", case["job"], "-o", out)
    assert result.exit_code == 0, result.output
    png = tmp_path / "report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert re.search(r"job \d+: \d+ of 999 candidates at or above 1.05", result.output), result.output
    image = load_rgb(png)
    height, width, _ = image.shape
    left = image[:, : width // 2]
    # The histogram: bars at or above the threshold, bars below it, the dashed threshold line, all in the
    # left panel; the bars above cover far more area than those below (about 985 vs 15 candidates).
    assert colour_pixels(left, ABOVE) > 20_000
    assert 0 < colour_pixels(left, BELOW) < colour_pixels(left, ABOVE) / 10
    assert colour_pixels(left, LINE) > 100
    assert colour_pixels(image[:, int(width * 0.6):], ABOVE) == 0  # the scatter uses other colours

    page = out.read_text(encoding="utf-8")
    embedded = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert embedded and base64.b64decode(embedded.group(1)) == png.read_bytes()
    # Self-contained: every src/href is a data: URI; no script.
    assert all(ref.startswith("data:") for ref in re.findall(r'(?:src|href)="([^"]*)"', page))
    assert "<script" not in page
    assert "pairs at or above the threshold" in page
    bands = re.findall(r"<h3>([^<]+): scores [^<]+ \(([\d,]+) pairs\)</h3>", page)
    assert [name for name, _ in bands] == ["well below the threshold", "just below the threshold",
                                           "just above the threshold", "above the threshold",
                                           "highest (check for boilerplate)"]
    assert sum(int(n.replace(",", "")) for _, n in bands) == 999
    sample_rows = page.count('<td class="text" lang="de" dir="auto">')
    assert sample_rows == sum(min(10, int(n.replace(",", ""))) for _, n in bands)

    # In a real browser: no console message, and the picture (with its histogram) is on screen.
    shot = tmp_path / "shot.png"
    console = open_in_chromium(out, shot)
    assert console == "", console
    screen = load_rgb(shot)
    assert colour_pixels(screen, ABOVE) > 5_000


HOSTILE = ["<script>alert('x')</script>", '"><img src=x onerror=alert(1)>', "\u202eevil\u202c", "&amp; ' \""]


def test_report_escapes_hostile_text(home, tmp_path):
    """Corpus text is data: markup, quotes, entities and bidi overrides in sentences come out
    escaped, each in its own cell, and the page runs no script in a real browser."""
    from .conftest import ROOT

    de = (ROOT / "examples" / "sample.de").read_text(encoding="utf-8").splitlines()[:80]
    en = {line.split("\t")[0]: line.split("\t")[1]
          for line in (ROOT / "examples" / "gold.tsv").read_text(encoding="utf-8").splitlines()}
    pairs = [(d, en[d]) for d in de if d in en][:60]
    pairs = [(f"{d} {HOSTILE[i % 4]}", f"{e} {HOSTILE[i % 4]}") if i % 3 == 0 else (d, e)
             for i, (d, e) in enumerate(pairs)]
    src, tgt = tmp_path / "h.de", tmp_path / "h.en"
    src.write_text("\n".join(d for d, _ in pairs) + "\n", encoding="utf-8")
    tgt.write_text("\n".join(e for _, e in reversed(pairs)) + "\n", encoding="utf-8")
    job = mine_in_process(config(), src, tgt, "de", "en", threshold=1.0)
    out = tmp_path / "report.html"
    result = invoke("report", job, "-o", out, "--per-band", "60")
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    cells = re.findall(r'<td class="text" lang="(?:de|en)" dir="auto">(.*?)</td>', page, flags=re.S)
    hostile_cells = [c for c in cells if "alert" in c or "\u202e" in c or "&amp;amp;" in c]
    assert len(hostile_cells) >= 8, len(hostile_cells)
    for cell in cells:
        assert "<" not in cell and ">" not in cell and '"' not in cell and "'" not in cell, cell
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert "&amp;amp; &#x27; &quot;" in page
    assert "<script" not in page and "<img src=x" not in page and page.count("<img") == 1  # the picture
    console = open_in_chromium(out, tmp_path / "shot.png")
    assert console == "", console


def test_console_check_catches_errors(tmp_path):
    """The console check above can fail: a page with a script error is reported."""
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'><title>x</title></head><body>"
                    "<script>console.error('broken'); missingFunction();</script></body></html>", encoding="utf-8")
    console = open_in_chromium(page, tmp_path / "bad.png")
    assert "broken" in console and "missingFunction" in console


# --------------------------------------------------------------------------- errors


def test_errors_are_one_line_with_exit_codes(tatoeba, tmp_path):
    from miner.embedding.encoders import resolve_model
    from miner.pipeline.jobs import JobOptions, create_job

    case = tatoeba["cases"]["deu"]
    job = case["job"]

    def check(args, code, fragment):
        result = invoke(*args)
        assert result.exit_code == code, (args, result.output)
        assert result.output.startswith("Error: ") and fragment in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output

    def gold(name, text):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    check(["eval", 4242, "--gold", case["gold_ids"]], 2, "no job 4242; `miner jobs` lists the jobs")
    check(["report", 4242], 2, "no job 4242")
    check(["eval", job, "--gold", tmp_path / "missing.tsv"], 3, "gold file not found")
    check(["eval", job, "--gold", gold("empty", "\n\n")], 3, "has no pairs")
    check(["eval", job, "--gold", gold("three", "1\t2\n3\t4\t5\n")], 3, "line 2 has 3 tab-separated field(s)")
    check(["eval", job, "--gold", gold("zero", "0\t5\n")], 3, "--id-base 0")
    check(["eval", job, "--gold", gold("past", "1\t2\n5000\t3\n")], 3, "line 2: src id 5000 is past the end")
    check(["eval", job, "--gold", gold("mixed", "1\t2\nfoo\n")], 3, "line 2 has 1 tab-separated")
    check(["eval", job, "--gold", gold("ids", "1\tHallo\n"), "--gold-format", "ids"], 3, "line 1 is not two ids")
    latin1 = tmp_path / "latin1"
    latin1.write_bytes("Grüße\tgreetings\n".encode("latin-1"))
    check(["eval", job, "--gold", latin1], 3, "not valid UTF-8")
    queued = create_job(tatoeba["cfg"], case["src"], case["tgt"],
                        JobOptions(src_lang="de", tgt_lang="en", model="muse", model_key=resolve_model("muse").key))
    check(["eval", queued, "--gold", case["gold_ids"]], 2, f"job {queued} is queued, not done")
    check(["report", queued], 2, f"job {queued} is queued, not done")
    check(["export", queued, "-o", tmp_path / "x.tsv", "--langid"], 2, "not done")
    check(["calibrate", job], 2, "1 job(s) but 0 --gold file(s)")
    check(["calibrate"], 2, "give the dev JOBS")
    check(["report", job, "-o", tmp_path / "nope" / "r.html"], 2, "does not exist")
    check(["export", job, "-o", tmp_path / "x.tsv", "--max-score", "1.0"], 2, "below --min-score")


def test_gold_ids_on_duplicate_and_skipped_lines(tatoeba, tmp_path):
    """A gold line that repeats an earlier line's text is matched through the stored duplicate
    occurrences (also once the input file has changed); a blank line cannot be found and counts as a
    miss. A corpus read before occurrences were stored (reader 1) re-reads the input file, and says
    when it has changed."""
    src, tgt = tmp_path / "dup.de", tmp_path / "dup.en"
    src.write_text("Ich habe Hunger.\nDas ist gut.\n\nIch  habe Hunger.\nDer Hund schläft.\n", encoding="utf-8")
    tgt.write_text("That is good.\nThe dog is sleeping.\nI am hungry.\n", encoding="utf-8")
    job = mine_in_process(tatoeba["cfg"], src, tgt, "de", "en", threshold=0.0)
    gold = tmp_path / "dup.gold"
    gold.write_text("4\t3\n2\t1\n5\t2\n3\t1\n", encoding="utf-8")  # line 4 = line 1; line 3 is blank
    got = json.loads(invoke("eval", job, "--gold", gold, "--json").output)
    assert got["gold"]["pairs"] == 4 and got["gold"]["unreachable"] == 1
    assert got["at_threshold"]["gold_found"] == 3 and got["at_threshold"]["exported"] == 3
    assert got["at_threshold"]["precision"] == 1.0 and got["at_threshold"]["recall"] == 0.75
    src.write_text("changed\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["eval", str(job), "--gold", str(gold), "--json"])
    assert result.exit_code == 0 and "warning" not in result.output
    assert json.loads(result.output)["at_threshold"] == got["at_threshold"]

    from sqlalchemy import delete, select, update

    from miner.runtime.db import Corpus, Job, SentenceDuplicate, session_scope

    with session_scope(tatoeba["cfg"].db_url) as s:  # as a corpus ingested by reader 1
        corpus_id = s.scalar(select(Job.src_corpus_id).where(Job.id == job))
        assert s.execute(delete(SentenceDuplicate).where(SentenceDuplicate.corpus_id == corpus_id)).rowcount == 1
        settings = dict(s.get(Corpus, corpus_id).settings, reader=1)
        s.execute(update(Corpus).where(Corpus.id == corpus_id).values(settings=settings))
    result = CliRunner().invoke(main, ["eval", str(job), "--gold", str(gold), "--json"])
    assert result.exit_code == 0
    assert "warning: 2 src gold line(s) are not among job" in result.output
    assert '"gold_found": 2' in result.output


def test_gold_from_standard_input(tatoeba):
    """`zcat gold.tsv.gz | miner eval JOB --gold -` gives what the file gives; `calibrate` takes `-`
    for one of its gold files only."""
    case = next(iter(tatoeba["cases"].values()))
    from_file = invoke("eval", case["job"], "--gold", case["gold_ids"], "--json")
    piped = CliRunner().invoke(main, ["eval", str(case["job"]), "--gold", "-", "--json"],
                               input=Path(case["gold_ids"]).read_bytes())
    assert piped.exit_code == 0, piped.output
    assert json.loads(piped.output)["at_threshold"] == json.loads(from_file.output)["at_threshold"]
    empty = CliRunner().invoke(main, ["eval", str(case["job"]), "--gold", "-"], input=b"")
    assert empty.exit_code == 3 and "Error: gold file - (standard input) has no pairs" in empty.output
    twice = CliRunner().invoke(main, ["calibrate", str(case["job"]), str(case["job"]), "--gold", "-", "--gold", "-"])
    assert twice.exit_code == 2 and "--gold - (standard input) can be given once" in twice.output


def test_report_legends_cover_no_data():
    """The histogram's legend sat in the upper right corner, over the bars of a dense job's high
    scores. Both legends now lie outside their panels."""
    from miner.faces.report import figure

    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(1.1, 0.05, 200), rng.normal(1.6, 0.1, 2000)]  # tall bars on the right
    lengths = rng.integers(10, 100, scores.size)
    fig = figure(scores, lengths, lengths, 1.3, "dense job", method="auto",
                 density={"x": [1.0, 1.5, 2.0], "null": [10.0, 1.0, 0.0], "translation": [0.0, 400.0, 10.0]})
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    for axes in fig.axes:
        legend = axes.get_legend().get_window_extent(renderer)
        assert not legend.overlaps(axes.get_window_extent(renderer)), axes.get_title()


def test_report_sample_size_error_names_the_option():
    """The error named `--sample` where `miner report`'s option is `--per-band`."""
    from miner.runtime.errors import UsageError
    from miner.faces.report import render_report

    with pytest.raises(UsageError, match=r"^--per-band must be at least 0, got -1$"):
        render_report(None, 1, per_band=-1)
