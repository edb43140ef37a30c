"""Helpers shared by ``bench/overhead.py`` and ``bench/mining_stage.py``.

* :func:`build_corpus`: two sides of ``n`` distinct real sentences each from the shared data
  (Tatoeba deu/fra/spa-eng + English distractors), with the Tatoeba pairs as gold;
* :func:`muse_embeddings`: muse embeddings of such a corpus, computed once and cached as ``.npy``;
* :func:`synthetic_embeddings`: clustered random vectors with planted noisy-copy pairs;
* machine information and a tiny median helper.

How the two sides are built (``build_corpus``)
-----------------------------------------------

The shared data has 3,000 non-English Tatoeba lines (1,000 each of deu, fra, spa), their 3,000
English partners (2,752 distinct: some translations repeat) and 31,050 English distractors; no line
occurs in two of these groups. So:

* source side = the 3,000 deu/fra/spa lines + the first ``n - 3000`` distractors;
* target side = the 2,752 distinct English partners + the next ``n - 2752`` distractors.

Both sides then hold ``n`` distinct lines and the 3,000 Tatoeba pairs (2,752 reachable one-to-one)
are the real pairs to find among the distractors. The sides are disjoint while
``n <= (3000 + 2752 + 31050) / 2 = 18,401`` (:func:`max_distinct_size`). For a larger ``n`` the
target side's distractors wrap around into the ones the source side uses: the ``2n - 36,802``
shared English lines are then identical on both sides (trivial pairs; every side still has ``n``
distinct lines). Lines are normalised as the product's reader does (so ingest keeps them all)
and both sides are shuffled with ``seed``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable from a checkout without installing
    sys.path.insert(0, str(REPO))

DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_OUT = REPO / "bench" / "out"
LANGUAGES = ("deu", "fra", "spa")
CORPUS_VERSION = 1


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def raw_lines(path: Path) -> list[str]:
    """Physical lines of a UTF-8 file, split on ``\\n`` only (as the product's reader does)."""
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line.decode("utf-8") for line in lines]


def _normalise(text: str) -> str:
    from miner.io.reader import normalise

    return normalise(text)


def _groups(data: Path) -> tuple[list[str], list[str], list[str]]:
    """(foreign lines, their English partners, distractors), normalised, blank lines dropped."""
    foreign, partners = [], []
    for lang in LANGUAGES:
        f = [_normalise(x) for x in raw_lines(data / "tatoeba" / f"tatoeba.{lang}-eng.{lang}")]
        e = [_normalise(x) for x in raw_lines(data / "tatoeba" / f"tatoeba.{lang}-eng.eng")]
        if len(f) != len(e):
            raise SystemExit(f"tatoeba.{lang}-eng: {len(f)} {lang} lines but {len(e)} eng lines")
        for a, b in zip(f, e):
            if a and b:
                foreign.append(a)
                partners.append(b)
    seen: set[str] = set()
    distractors = []
    taken = set(foreign) | set(partners)
    for line in (_normalise(x) for x in raw_lines(data / "distractors.eng")):
        if line and line not in seen and line not in taken:
            seen.add(line)
            distractors.append(line)
    return foreign, partners, distractors


def _distinct(lines: list[str]) -> list[str]:
    seen: set[str] = set()
    return [x for x in lines if not (x in seen or seen.add(x))]


def max_distinct_size(data: Path = DEFAULT_DATA) -> int:
    """Largest ``n`` for which both sides are disjoint (no line on both sides)."""
    foreign, partners, distractors = _groups(data)
    return (len(_distinct(foreign)) + len(_distinct(partners)) + len(distractors)) // 2


def build_corpus(n: int, folder: Path, *, data: Path = DEFAULT_DATA, seed: int = 0) -> dict:
    """Write (once) ``n`` distinct source lines and ``n`` distinct target lines; see the module doc.

    Returns a dict: ``src``, ``tgt`` (paths), ``n``, ``gold`` (set of (src text, tgt text)),
    ``shared_lines`` (lines on both sides), ``foreign``/``partners``/``distractors`` counts
    and ``how`` (one line describing the construction)."""
    foreign, partners, distractors = _groups(data)
    foreign_d, partners_d = _distinct(foreign), _distinct(partners)
    n_src_d, n_tgt_d = n - len(foreign_d), n - len(partners_d)
    if n_src_d < 0 or n_tgt_d < 0:
        raise SystemExit(f"size {n} is below the {max(len(foreign_d), len(partners_d))} Tatoeba lines per side")
    if n_src_d > len(distractors) or n_tgt_d > len(distractors):
        raise SystemExit(f"size {n} needs more than the {len(distractors)} distractors the shared data has")
    src_extra = distractors[:n_src_d]
    # Target distractors follow the source ones and wrap around when the data runs out.
    tgt_extra = [distractors[(n_src_d + i) % len(distractors)] for i in range(n_tgt_d)]
    shared = len(set(src_extra) & set(tgt_extra))
    src = foreign_d + src_extra
    tgt = partners_d + tgt_extra
    rng = random.Random(seed)
    rng.shuffle(src)
    rng.shuffle(tgt)
    assert len(set(src)) == n and len(set(tgt)) == n
    gold = set(zip(foreign, partners))
    stem = f"real-v{CORPUS_VERSION}-n{n}-s{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for side, lines in (("src", src), ("tgt", tgt)):
        path = folder / f"{stem}.{side}"
        text = "".join(line + "\n" for line in lines)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        paths[side] = path
    how = (f"src = {len(foreign_d)} Tatoeba deu+fra+spa lines + {len(src_extra)} distractors; "
           f"tgt = {len(partners_d)} distinct English partners + {len(tgt_extra)} other distractors"
           + (f" ({shared} of them also on the src side: data exhausted above {max_distinct_size(data)})"
              if shared else " (sides disjoint)")
           + f"; gold = {len(gold)} Tatoeba pairs")
    return {"src": paths["src"], "tgt": paths["tgt"], "n": n, "gold": gold, "shared_lines": shared,
            "src_lines": src, "tgt_lines": tgt, "how": how}


# --------------------------------------------------------------------------- embeddings


def _digest(lines: list[str]) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:16]


def muse_embeddings(lines: list[str], cache: Path, *, threads: int = 1, batch_size: int = 256) -> np.ndarray:
    """muse embeddings of ``lines`` (L2-normalised float32), cached under ``cache`` by content."""
    from miner.embedding.encoders import encode, load_model, resolve_model

    spec = resolve_model("muse")
    path = cache / f"emb-{spec.key}-{_digest(lines)}-{len(lines)}.npy"
    if path.exists():
        arr = np.load(path)
        if arr.shape[0] == len(lines):
            return arr
    cache.mkdir(parents=True, exist_ok=True)
    model = load_model(spec, threads=threads)
    arr = encode(model, lines, batch_size=batch_size)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)
    return arr


def synthetic_embeddings(n_x: int, n_y: int, *, dim: int = 512, clusters: int = 1000, planted: float = 0.2,
                         noise: float = 0.35, seed: int = 0) -> tuple[np.ndarray, np.ndarray, set]:
    """Clustered unit vectors: each row is a random cluster centre plus Gaussian noise (so there are
    hubs); ``planted * min(n_x, n_y)`` target rows are noisy copies of distinct source rows (the
    "translations"). Returns ``(x, y, planted pairs {(i, j)})``."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def points(n: int) -> np.ndarray:
        v = centres[rng.integers(0, clusters, n)]
        v = v + rng.standard_normal((n, dim), dtype=np.float32) * np.float32(1.0 / np.sqrt(dim))
        return v

    x = points(n_x)
    y = points(n_y)
    n_p = int(planted * min(n_x, n_y))
    src_ids = rng.choice(n_x, n_p, replace=False)
    tgt_ids = rng.choice(n_y, n_p, replace=False)
    y[tgt_ids] = x[src_ids] + rng.standard_normal((n_p, dim), dtype=np.float32) * np.float32(noise / np.sqrt(dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return (np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.float32),
            set(zip(src_ids.tolist(), tgt_ids.tolist())))


# --------------------------------------------------------------------------- machine


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from miner.runtime.config import available_cores  # type: ignore

        cores = available_cores()
    except Exception:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"host": platform.node(), "cpu": cpu, "cores": cores, "python": platform.python_version(),
            "loadavg_start": list(os.getloadavg()), "code": code_state()}


def code_state() -> str:
    """The commit measured, and the product files changed since (other people edit them)."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "miner", "workers"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.split("\n")
        changed = [line[3:] for line in dirty if line.strip()]
        return head + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")
    except Exception:
        return "unknown"


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def dump_json(obj, target: str | None) -> None:
    """``--json`` handling: '-' prints JSON on stdout; a path writes it there."""
    text = json.dumps(obj, indent=2, default=str)
    if target in (None, "-"):
        print(text)
    else:
        Path(target).write_text(text + "\n")
        log(f"JSON written to {target}")


def emit(result: dict, target: str | None, print_table) -> None:
    """``--json -`` prints only JSON; otherwise the table, and the JSON too when a path is given."""
    if target == "-":
        dump_json(result, "-")
    else:
        print_table(result)
        if target:
            dump_json(result, target)


def miner(env: dict, *args, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m miner ARGS`` with ``env``, from the repository root, output captured."""
    return subprocess.run([sys.executable, "-m", "miner", *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=str(REPO))


def submit(env: dict, corpus: dict, shard_size: int, name: str = "") -> int:
    """``miner submit`` the corpus (``--src-lang xx --tgt-lang en``); returns the job id."""
    result = miner(env, "submit", corpus["src"], corpus["tgt"], "--src-lang", "xx", "--tgt-lang", "en",
                   "--shard-size", shard_size)
    if result.returncode != 0:
        raise SystemExit(f"{name}: submit failed: {result.stderr[-2000:]}")
    return int(result.stdout.strip().splitlines()[-1])


def start_worker(env: dict, folder: Path, n: int, cwd: Path | None = None) -> subprocess.Popen:
    """A ``miner worker`` (concurrency 1, named ``w<n>@bench``) in its own process group, logging to
    ``folder/worker<n>.log``; stop it with :func:`stop_workers`."""
    log = open(folder / f"worker{n}.log", "wb")  # noqa: SIM115 - closed by stop_workers
    proc = subprocess.Popen([sys.executable, "-m", "miner", "worker", "--concurrency", "1", "--loglevel", "WARNING",
                             "--name", f"w{n}@bench"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            cwd=str(cwd or folder), start_new_session=True)
    proc.log = log
    return proc


def stop_workers(procs) -> None:
    """SIGTERM each worker's process group, SIGKILL after 60 s; close the logs."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.log.close()
