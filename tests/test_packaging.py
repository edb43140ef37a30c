"""The distribution installs one top-level package, ``miner`` (issue 28): the ``workers/`` and
``migrations/`` folders install as ``miner.workers`` and ``miner.migrations``, so bitext-miner
works beside another project's ``workers`` or ``migrations`` package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

from .conftest import ROOT, run_miner


def test_the_wheel_holds_only_the_miner_package(tmp_path):
    source = tmp_path / "source"  # a copy: setuptools builds in the source tree (build/, *.egg-info)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("miner", "workers", "migrations"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(tmp_path),
         str(source)], capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert built.returncode == 0, built.stderr
    [wheel] = tmp_path.glob("bitext_miner-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"miner"}
    for needed in ("miner/workers/tasks.py", "miner/workers/app.py", "miner/migrations/env.py",
                   "miner/migrations/script.py.mako", "miner/migrations/versions/0001_initial_schema.py"):
        assert needed in names
    versions = {n.rsplit("/", 1)[1] for n in names if n.startswith("miner/migrations/versions/0")}
    assert versions == {p.name for p in (ROOT / "migrations" / "versions").glob("0*.py")}


def test_it_works_beside_foreign_workers_and_migrations_packages(tmp_path):
    """Another distribution's ``workers`` and ``migrations`` come first on the path (as when both
    are installed): the schema is created and a worker's modules load from bitext-miner's own."""
    foreign = tmp_path / "foreign"
    for name in ("workers", "migrations"):
        (foreign / name).mkdir(parents=True)
        (foreign / name / "__init__.py").write_text("OWNER = 'another project'\n", encoding="utf-8")
    env = {"PYTHONPATH": str(foreign)}
    home = tmp_path / "home"
    upgrade = run_miner(home, "db", "upgrade", **env)
    assert upgrade.returncode == 0, upgrade.stderr
    from miner.runtime.migrate import head_revision

    current = run_miner(home, "db", "current", **env)
    assert current.returncode == 0 and current.stdout.startswith(head_revision()), current.stderr
    probe = ("import workers, migrations, miner.workers.tasks as t, miner.runtime.migrate as m; "
             "assert workers.OWNER == migrations.OWNER == 'another project'; "
             "print(sorted(n for n in t.app.tasks if n.startswith('miner.')), m.MIGRATIONS.name)")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            cwd=str(tmp_path), env={**os.environ, **env})
    assert loaded.returncode == 0, loaded.stderr
    assert "'miner.embed'" in loaded.stdout and "'miner.finish'" in loaded.stdout
    assert loaded.stdout.strip().endswith("migrations")
