"""MINER_HOME holds whole corpora: everything miner creates there is for its user only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.conftest import run_miner

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_mine_creates_private_files_and_folders(tmp_path):
    home = tmp_path / "home"
    old = os.umask(0o022)  # a usual login umask: without the fix everything comes out world-readable
    try:
        result = run_miner(home, "mine", EXAMPLES / "sample.de", EXAMPLES / "sample.en", "--src-lang", "de",
                           "--tgt-lang", "en", "--model", "minilm", "--threshold", "1.0", "-q",
                           "-o", tmp_path / "pairs.tsv")
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    paths = [home, *home.rglob("*")]
    assert any(p.name == "miner.db" for p in paths) and any(p.suffix == ".npy" for p in paths)
    assert any(p.is_dir() and p.name == "logs" for p in paths) and any(p.suffix == ".log" for p in paths)
    exposed = [f"{p.relative_to(home.parent)} {stat.filemode(p.stat().st_mode)}" for p in paths
               if not p.is_symlink() and p.stat().st_mode & 0o077]
    assert exposed == []
    # What the user asked for with -o keeps the user's own umask (022 here): 0644, as any tool writes.
    assert stat.S_IMODE((tmp_path / "pairs.tsv").stat().st_mode) == 0o644
