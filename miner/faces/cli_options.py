"""The ``miner`` command line's shared parts: error handling and the options shared by commands."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import click

from miner.runtime.config import mask_url
from miner.runtime.errors import MinerError, OutputClosed
from miner.pipeline.spec import THRESHOLD_HELP, fields as spec_fields  # noqa: F401 - THRESHOLD_HELP re-exported


def warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


class MinerGroup(click.Group):
    """Turns library errors into one ``Error: ...`` line and the error's exit code, in one place."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except OutputClosed:
            _quiet_exit(ctx)
        except MinerError as exc:
            error = click.ClickException(str(exc))
            error.exit_code = exc.exit_code
            raise error from None
        except OSError as exc:
            if isinstance(exc, BrokenPipeError) and _stdout_gone():
                _quiet_exit(ctx)  # e.g. `miner jobs | head`: click.echo met a closed pipe
            if exc.filename is None:  # e.g. a socket's error, a full disk met on a write
                raise click.ClickException(f"{exc.strerror or exc}; check the paths given, their permissions "
                                           f"and free space") from None
            where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
            raise click.ClickException(
                f"cannot use {where}: {exc.strerror or exc}; check the path, its permissions and free space"
            ) from None
        except Exception as exc:
            from miner.runtime.dbapi import is_database_error

            if is_database_error(exc):
                cfg = ctx.obj.get("config") if isinstance(ctx.obj, dict) else None
                where = f" at {mask_url(cfg.db_url)}" if cfg else ""
                detail = (str(getattr(exc, "orig", exc) or exc).splitlines() or [type(exc).__name__])[0]
                raise click.ClickException(f"database error{where}: {detail}") from None
            from miner.workers.client import is_broker_error

            if not is_broker_error(exc):
                raise
            cfg = ctx.obj.get("config") if isinstance(ctx.obj, dict) else None
            where = f" at {mask_url(cfg.broker_url)}" if cfg else ""
            raise click.ClickException(
                f"cannot reach the broker{where}: {str(exc).splitlines()[0]}; check MINER_BROKER_URL "
                "and that the server runs"
            ) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


def _stdout_gone() -> bool:
    """Whether standard output is a pipe whose reader has gone."""
    import select

    try:
        fd = sys.stdout.fileno()
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        events = poll.poll(0)
    except (AttributeError, ValueError, OSError):  # not a real file (CliRunner), or no poll
        return False
    return any(event & select.POLLERR for _, event in events)


def _quiet_exit(ctx: click.Context):
    """End with status 0 and no message: the reader of standard output went away (``| head``), as
    Unix tools do. Standard output is pointed at /dev/null first, so that the interpreter's final
    flush of what is still buffered does not complain either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, ValueError, OSError):
        pass
    ctx.exit(0)


class ThresholdType(click.ParamType):
    """``--threshold``: a number, or ``auto``."""

    name = "NUMBER|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, float) or value is None:
            return value
        text = str(value).strip()
        if text.lower() == "auto":
            return "auto"
        try:
            number = float(text)
        except ValueError:
            self.fail(f"{value!r} is not a number or 'auto'", param, ctx)
        if number != number or number in (float("inf"), float("-inf")):
            self.fail(f"{value!r} is not a finite number; give a number or 'auto'", param, ctx)
        return number


class InputPath(click.ParamType):
    """An input corpus: a local path (a :class:`Path`), or an fsspec URL kept as a string
    (``s3://bucket/de.txt.gz``; the workers stream it, :mod:`miner.io.storage`)."""

    name = "path"

    def convert(self, value, param, ctx):
        from miner.io.storage import is_url

        if isinstance(value, Path) or not is_url(str(value)):
            return Path(value)
        return str(value)


def _spec_option(spec) -> click.Option:
    """The click option of one field of the job spec (:mod:`miner.pipeline.spec`)."""
    meta = spec.metadata
    flag = "--" + spec.name.replace("_", "-")
    default = meta["cli_default"]
    required = default is dataclasses.MISSING
    kw: dict = {"help": meta["help"]}
    if meta["kind"] == "flag":
        return click.option(flag, spec.name, is_flag=True, default=default, **kw)
    if meta["kind"] == "threshold":
        kind = ThresholdType()
    elif meta["choices"] is not None:
        kind = click.Choice(list(meta["choices"]))
    elif meta["minimum"] is not None:
        kind = click.IntRange(min=meta["minimum"])
    else:
        kind = None
    if kind is not None:
        kw["type"] = kind
    if meta["metavar"]:
        kw["metavar"] = meta["metavar"]
    if required:
        return click.option(flag, spec.name, required=True, **kw)
    return click.option(flag, spec.name, default=default, show_default=meta["show_default"], **kw)


def job_options(fn):
    """The options shared by ``mine`` and ``submit``: the job spec's (:mod:`miner.pipeline.spec`), and --force."""
    decorators = [
        click.argument("src", type=InputPath()),
        click.argument("tgt", type=InputPath()),
        *(_spec_option(spec) for spec in spec_fields()),
        click.option("--force", is_flag=True,
                     help="Mine again even when a job with the same files (by content) and options exists."),
    ]
    for decorator in reversed(decorators):
        fn = decorator(fn)
    return fn


def export_options(fn):
    """The output options shared by ``export`` and ``mine``: where (``-o``, the format from the name or
    ``--format``), the score floor, the header, probabilities and the filters (:mod:`miner.io.filters`)."""
    decorators = [
        click.option("-o", "--output", "output", required=True,
                     help="Output file (.gz compresses, - for stdout; the file name prefix with --format moses)."),
        click.option("--min-score", type=float, default=None,
                     help="Keep pairs scoring >= this (equal scores are kept; LASER keeps > only). Default: the job's "
                          "threshold, automatic or not; this wins."),
        click.option("--header", is_flag=True,
                     help="Write a header line (score, source, target[, probability][, src_id, tgt_id])."),
        click.option("--with-probability", is_flag=True,
                     help="Add the estimated probability that the pair is a translation (from its score, against "
                          "the job's decoys): a 4th TSV column, a JSONL key (--threshold auto jobs; empty / null "
                          "otherwise)."),
        click.option("--with-ids", "with_ids", is_flag=True,
                     help="Add src_id and tgt_id columns to TSV (after score, source, target and the probability): "
                          "the input ids (--input-format tsv/jsonl), else 1-based line numbers; a sentence on "
                          "several lines lists every id, comma-separated. JSONL always has ids and metadata."),
        click.option("--min-probability", type=click.FloatRange(min=0, max=1), default=None,
                     help="Drop pairs whose estimated probability is below P (--threshold auto jobs only)."),
        click.option("--format", "fmt", type=click.Choice(["tsv", "jsonl", "moses"]), default=None,
                     help="tsv (default; .gz compresses), jsonl (score, src, tgt, 1-based src_line/tgt_line, src_id/tgt_id, "
                          "src_ids/tgt_ids, src_meta/tgt_meta; default for .jsonl names), moses (two files OUTPUT.SRC_LANG and OUTPUT.TGT_LANG)."),
        click.option("--max-score", type=float, default=None, help="Drop pairs scoring above this (likely boilerplate)."),
        click.option("--min-length", type=click.IntRange(min=0), default=None, help="Drop pairs with a side shorter than N characters."),
        click.option("--max-length", type=click.IntRange(min=0), default=None, help="Drop pairs with a side longer than N characters."),
        click.option("--max-length-ratio", type=click.FloatRange(min=1), default=None,
                     help="Drop pairs whose longer side has more than R times the characters of the shorter."),
        click.option("--drop-identical", is_flag=True, help="Drop pairs whose sides are equal ignoring case, spaces and punctuation."),
        click.option("--drop-digit-mismatch", is_flag=True, help="Drop pairs whose numbers differ between the sides."),
        click.option("--dedup", is_flag=True, help="Drop pairs equal to a better-scoring pair (ignoring case, spaces, punctuation)."),
        click.option("--langid", is_flag=True, help="Drop pairs with a side not in the job's language for it (py3langid)."),
        click.option("--langid-min-share", type=click.FloatRange(min=0, max=1, min_open=True), default=0.25, show_default=True,
                     help="A side passes when its language's probability is at least this share of the top language's."),
    ]
    for decorator in reversed(decorators):
        fn = decorator(fn)
    return fn


def gold_options(fn):
    decorators = [
        click.option("--gold-format", "gold_format", type=click.Choice(["auto", "ids", "text"]), default="auto",
                     show_default=True, help="ids: SRC_ID<TAB>TGT_ID line numbers (BUCC); text: SOURCE<TAB>TARGET."),
        click.option("--id-base", type=click.Choice(["0", "1"]), default="1", show_default=True,
                     help="Gold ids count lines from 1 (BUCC, editors) or 0."),
        click.option("--sample", is_flag=True,
                     help="The gold covers a sample of source sentences: judge only pairs whose source is in it."),
    ]
    for decorator in reversed(decorators):
        fn = decorator(fn)
    return fn
