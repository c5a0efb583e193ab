"""The ``kedsl`` command line: a thin layer over the library.

Every command that needs no model (check, fmt, plugins, log, ...) must not import torch:
model-touching imports happen inside the command functions.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from .errors import DataError, ExitCode, KedslError, UsageError, did_you_mean
from .evaluation.datasets import FORMATS as DATA_FORMATS  # torch-free, like everything imported here


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user errors into `error:`/`hint:` lines and exit codes, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KedslError as exc:
            render = getattr(exc, "render", None)
            if render is not None:  # script diagnostics: every error, with source line and caret
                click.echo(render(), err=True)
                sys.exit(int(exc.exit_code))
            click.echo(f"error: {exc.message}", err=True)
            if exc.hint:
                click.echo(f"hint: {exc.hint}", err=True)
            sys.exit(int(exc.exit_code))
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:  # `kedsl relations | head`: the reader left, not a bug
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(0)
        except Exception:  # a bug: show it, with the distinct exit code
            import traceback

            traceback.print_exc()
            click.echo(
                "internal error: this is a bug in kedsl or one of its plugins; please report it with the traceback above",
                err=True,
            )
            sys.exit(int(ExitCode.INTERNAL))

    return wrapper


class _Group(click.Group):
    def main(self, *args: Any, **kwargs: Any) -> Any:  # usage errors exit 2 (click's default)
        return super().main(*args, **kwargs)


@click.group(cls=_Group)
@click.version_option(package_name="kedsl")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-v info, -vv debug).")
def main(verbose: int) -> None:
    """kedsl: declarative knowledge editing for language models."""
    _setup_logging(verbose)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def plugins(as_json: bool) -> None:
    """List every loaded plugin, where it came from and what it provides."""
    from .registry import get_registry

    reg = get_registry()
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "name": p.name,
                        "module": p.module,
                        "distribution": p.distribution,
                        "version": p.version,
                        "error": p.error,
                        "provides": p.provides,
                    }
                    for p in reg.plugins
                ],
                indent=2,
            )
        )
        return
    for p in reg.plugins:
        origin = f"{p.distribution} {p.version}" if p.distribution else "in-process"
        status = "FAILED" if p.error else "ok"
        click.echo(f"{p.name:<16} {status:<6} {p.module}  ({origin})")
        if p.error:
            click.echo(f"    error: {p.error}")
        for kind, names in sorted(p.provides.items()):
            shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
            click.echo(f"    {kind}: {shown}")
    if reg.failed:
        click.echo(f"\n{len(reg.failed)} plugin(s) failed to load; kedsl works without them.", err=True)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (with paraphrases).")
@handle_errors
def relations(as_json: bool) -> None:
    """List the relations the plugins provide: id, aliases and prompt template."""
    from .registry import get_registry

    # Wikidata ids in numeric order (P17 before P103), then named relations.
    rels = sorted(
        get_registry().relations.values(),
        key=lambda r: (0, int(r.id[1:]), "") if r.id[:1] == "P" and r.id[1:].isdigit() else (1, 0, r.id),
    )
    if as_json:
        click.echo(
            json.dumps(
                [
                    {"id": r.id, "aliases": list(r.aliases), "template": r.template,
                     "paraphrases": list(r.paraphrases), "doc": r.doc}
                    for r in rels
                ],
                indent=2,
            )
        )
        return
    id_width = max((len(r.id) for r in rels), default=2)
    alias_width = max((len(", ".join(r.aliases)) for r in rels), default=7)
    for r in rels:
        click.echo(f"{r.id:<{id_width}}  {', '.join(r.aliases):<{alias_width}}  {r.template}")



class _PrintReporter:
    """Prints one line per written edit as the run goes; the rows of a data file as one
    progress line (rows measured, elapsed, ETA), redrawn in place on a terminal."""

    # Without a terminal, a progress line at most this often (seconds), and the last one.
    LINE_EVERY_S = 10.0

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.progress: dict[tuple[int, str], dict[str, Any]] = {}  # per `edits from` statement
        self.method_clock = {"started": time.monotonic(), "shown": 0.0}  # the method's own messages

    def method_progress(self, message: str) -> None:
        """What the method says while it works (a large batch's target search): a line at
        most every LINE_EVERY_S seconds, the first once the method has worked that long (a
        quick edit prints nothing), with an ETA where the message counts done/total."""
        now = time.monotonic()
        if now - self.method_clock["shown"] < self.LINE_EVERY_S:
            return
        self.method_clock["shown"] = now
        elapsed = now - self.method_clock["started"]
        done = re.search(r"(\d+)/(\d+)", message)
        eta = ""
        if done is not None and 0 < int(done[1]) < int(done[2]):
            eta = f"  ETA {_clock(elapsed / int(done[1]) * (int(done[2]) - int(done[1])))}"
        click.echo(f"  {message}  elapsed {_clock(elapsed)}{eta}", err=True)

    def edit_started(self, index: int, total: int, edit: Any) -> None:
        now = time.monotonic()
        self.method_clock = {"started": now, "shown": now}
        if edit.row is None:
            click.echo(
                f"[{index + 1}/{total}] editing {edit.request.subject!r}: -> {edit.request.target!r} using {edit.method} ...",
                err=True,
            )
            return
        key = (edit.source_line, edit.source.path)
        if key not in self.progress:
            self.progress[key] = {"done": 0, "rows": edit.source.rows, "started": time.monotonic(), "first": None, "shown": 0.0}
            how = "in one batch" if edit.batch is not None else "one by one"
            click.echo(f"[{index + 1}/{total}] {edit.source.rows} row(s) of {edit.source.display} (line {edit.source_line}), "
                       f"{how}, using {edit.method} ...", err=True)  # fmt: skip

    def edit_measured(self, index: int, total: int, edit: Any) -> None:
        if edit.row is None:
            return
        p = self.progress[(edit.source_line, edit.source.path)]
        now = time.monotonic()
        p["done"] += 1
        p["first"] = p["first"] or now
        last = p["done"] == p["rows"]
        if not (last or self.tty or now - p["shown"] >= self.LINE_EVERY_S):
            return
        p["shown"] = now
        # The rate of the rows measured after the first: a batch's update comes before its first.
        eta = (now - p["first"]) / (p["done"] - 1) * (p["rows"] - p["done"]) if p["done"] > 1 else None
        line = (f"  rows {p['done']}/{p['rows']} ({100 * p['done'] / p['rows']:.0f}%)  elapsed {_clock(now - p['started'])}"
                + ("" if last else f"  ETA {_clock(eta) if eta is not None else '?'}"))  # fmt: skip
        if self.tty:
            click.echo("\r" + line + "\x1b[K", err=True, nl=last)
        else:
            click.echo(line, err=True)

    def edit_finished(self, report: Any, total: int) -> None:
        if report.row is not None:
            return  # rows are summarised in the table at the end
        mark = {"applied": "applied", "rolled_back": "ROLLED BACK", "failed": "FAILED", "skipped": "skipped"}[report.status]
        says = f" | now: {report.request.prompt!r} -> {report.says_now!r}" if report.says_now is not None else ""
        click.echo(f"[{report.index + 1}/{total}] {report.request.subject}  {report.method}  {report.seconds:.1f}s  {mark}{says}")


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _echo_table(header: tuple[str, ...], rows: list[tuple[str, ...]], right: tuple[int, ...] = ()) -> None:
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    click.echo(line(header))
    click.echo("  ".join("-" * w for w in widths))
    for row in rows:
        click.echo(line(row))


def _threshold(x: Any) -> str:
    return "reported" if x.op is None else f"{x.op} {x.threshold:.3f}"


def print_expectation_table(reports: list[Any]) -> None:
    """Each written edit's expectations, one line each; the rows of each data file
    summarised per metric (rows, passed, failed, mean, min, the failing rows)."""
    rows = []
    for r in reports:
        if r.row is None:
            for x in r.expectations:
                value = "n/a" if x.value is None else f"{x.value:.3f}"
                rows.append((str(r.index + 1), r.request.subject, x.metric, value, _threshold(x), "pass" if x.passed else "FAIL"))
    if rows:
        click.echo("")
        _echo_table(("#", "subject", "metric", "value", "threshold", "result"), rows)
    groups: dict[tuple[int, str], list[Any]] = {}
    for r in reports:
        if r.row is not None:
            groups.setdefault((r.source_line, r.source.display), []).append(r)
    for (line, display), members in groups.items():
        statuses: dict[str, int] = {}
        for r in members:
            statuses[r.status] = statuses.get(r.status, 0) + 1
        click.echo(f"\n{display} (line {line}): {len(members)} rows, "
                   + ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in statuses.items()))  # fmt: skip
        metrics: dict[str, list[tuple[int, Any]]] = {}
        for r in members:
            for x in r.expectations:
                metrics.setdefault(x.metric, []).append((r.row, x))
        if not metrics:
            continue
        table = []
        for metric, results in metrics.items():
            values = [x.value for _, x in results if x.value is not None]
            failing = [str(row) for row, x in results if not x.passed]
            thresholds = {_threshold(x) for _, x in results}
            table.append((
                metric, str(len(results)), str(len(results) - len(failing)), str(len(failing)),
                f"{sum(values) / len(values):.3f}" if values else "n/a", f"{min(values):.3f}" if values else "n/a",
                thresholds.pop() if len(thresholds) == 1 else "varies",
                ", ".join(failing[:10]) + (f", ... ({len(failing)} in all)" if len(failing) > 10 else ""),
            ))  # fmt: skip
        _echo_table(("metric", "rows", "pass", "FAIL", "mean", "min", "threshold", "failing rows"), table, right=(1, 2, 3, 4, 5))


REPORT_COLUMNS = ("edit", "line", "data_file", "row", "subject", "prompt", "target", "method", "status", "metric", "value",
                  "op", "threshold", "passed", "edit_id")  # fmt: skip


def write_report(reports: list[Any], path: str) -> None:
    """The full table of an apply run as CSV: one line per edit and expectation (an edit
    without expectations gets one line), rows of data files with their row number."""
    import csv

    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(REPORT_COLUMNS)
        for r in reports:
            base = [r.index + 1, r.source_line, r.source.display if r.source is not None else "", r.row or "",
                    r.request.subject, r.request.prompt, r.request.target, r.method, r.status]  # fmt: skip
            for x in r.expectations or [None]:
                measured = [x.metric, "" if x.value is None else x.value, x.op or "", "" if x.threshold is None else x.threshold,
                            int(x.passed)] if x is not None else ["", "", "", "", ""]  # fmt: skip
                w.writerow(base + measured + [r.edit_id or ""])


@main.command()
@click.argument("script", type=click.Path(dir_okay=False))
@click.option("--db", type=click.Path(dir_okay=False), default=None, help="Provenance database (default: $KEDSL_DB or ./kedsl.db).")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Save the edited model here (overrides `save to`).")
@click.option("--on-fail", type=click.Choice(["rollback", "keep", "abort"]), default=None, help="What a failed expectation does (overrides the script's on_fail).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for every method's randomness.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="Write every edit's expectations (each row of a data file's too) to this CSV file.")
@click.option("--sign", "sign_key", type=click.Path(dir_okay=False), default=None,
              help="Sign the saved model and its provenance attestation with this private key (PEM; see `kedsl keygen`).")
@handle_errors
def apply(script: str, db: str | None, out: str | None, on_fail: str | None, seed: int, report_path: str | None,
          sign_key: str | None) -> None:  # fmt: skip
    """Apply a .ke script: edit the model, check every expectation, save, record.

    Exit codes: 0 all expectations held, 1 an expectation failed, 2 invalid script or
    usage, 3 internal error, 4 model error, 5 database error.
    """
    from . import api

    click.echo(f"checking {script} ...", err=True)
    report = api.apply(script, db=db, out=out, on_fail=on_fail, seed=seed, reporter=_PrintReporter(), argv=sys.argv, sign=sign_key)
    if report_path:
        write_report(report.edits, report_path)
        click.echo(f"wrote {report_path}", err=True)
    print_expectation_table(report.edits)
    applied = sum(1 for r in report.edits if r.status == "applied")
    click.echo(
        f"\nrun {report.run_id}: {applied}/{len(report.edits)} edits applied, "
        f"{report.failed_expectations} expectation(s) failed"
    )
    if report.saved_to:
        click.echo(f"saved the edited model to {report.saved_to} (fingerprint {report.fingerprint_after[:16]})"
                   + (", signed with " + sign_key if sign_key else ""))
    if report.failed_expectations:
        sys.exit(int(ExitCode.EXPECTATION_FAILED))


@main.command()
@click.argument("model")
@click.argument("prompts", nargs=-1, required=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=20, show_default=True, help="Tokens to generate per prompt.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True)
@handle_errors
def generate(model: str, prompts: tuple[str, ...], max_new_tokens: int, dtype: str, device: str) -> None:
    """Greedy continuations of PROMPTS from MODEL (an alias such as smollm2-135m, a local
    directory, a .gguf file or a Hugging Face id), one `PROMPT -> continuation` line each."""
    from .toolkit.generation import generate as greedy
    from .model.loading import load_model

    loaded = load_model(model, {"dtype": dtype, "device": device})
    for prompt, continuation in zip(prompts, greedy(loaded, list(prompts), max_new_tokens=max_new_tokens)):
        # one line per prompt: show line breaks in the continuation as \n
        click.echo(f"{prompt} -> {continuation}".replace("\n", "\\n"))


@main.command()
@click.argument("subject", required=False)
@click.argument("relation", required=False)
@click.option("--prompt", help="A prompt containing SUBJECT, instead of a relation.")
@click.option("--model", "model_ref", default="smollm2-135m", show_default=True, help="Alias, local directory, .gguf file or hub id.")
@click.option("--kind", type=click.Choice(["hidden", "mlp", "attn", "all"]), default="all", show_default=True)
@click.option("--samples", type=click.IntRange(min=1), default=10, show_default=True, help="Noise samples per restored cell.")
@click.option("--window", type=click.IntRange(min=1), default=10, show_default=True, help="Layers restored together for mlp and attn.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dataset", type=click.Path(dir_okay=False), help="Average over known facts (ROME's known_1000.json format).")
@click.option("--limit", type=click.IntRange(min=1), default=200, show_default=True, help="With --dataset: facts tried.")
@click.option("--exact/--bf16", default=None, help="float32 corrupted passes, or bf16 autocast (default: bf16 only where the CPU has native bf16).")
@click.option("--out", "out_dir", default="locate", show_default=True, help="Folder for the PNG heatmaps and JSON.")
@handle_errors
def locate(subject: str | None, relation: str | None, prompt: str | None, model_ref: str, kind: str, samples: int, window: int,
           seed: int, dataset: str | None, limit: int, exact: bool | None, out_dir: str) -> None:
    """Where MODEL keeps a fact, by causal tracing (Meng et al. 2022): noise the subject's
    embeddings, restore one (token, layer) state at a time, and see how much of the
    answer's probability comes back. Writes heatmaps (PNG) and numbers (JSON) to --out.

    \b
    kedsl locate "Eiffel Tower" located_in
    kedsl locate "Eiffel Tower" --prompt "The Eiffel Tower is in"
    kedsl locate --dataset known_1000.json --limit 200
    """
    from .registry import get_registry

    kinds = ["hidden", "mlp", "attn"] if kind == "all" else [kind]
    if dataset is None:
        if not subject:
            raise UsageError("locate needs a SUBJECT and a RELATION (or --prompt), or --dataset", 'e.g. kedsl locate "Eiffel Tower" located_in')
        if prompt is None:
            if relation is None:
                raise UsageError("locate needs a RELATION or --prompt", "see `kedsl relations`")
            registry = get_registry()
            rel = registry.relation(relation)
            if rel is None:
                raise UsageError(f"unknown relation `{relation}`", did_you_mean(relation, registry.relation_names()) or "see `kedsl relations`")
            prompt = rel.prompt(subject)
        elif relation is not None:
            raise UsageError("give a RELATION or --prompt, not both")
    from .locate import average_trace, read_known_facts, trace_fact, write_average
    from .model.loading import load_model

    records = read_known_facts(dataset)[:limit] if dataset else []
    model = load_model(model_ref, {})
    from .toolkit.precision import resolve_bf16

    bf16 = resolve_bf16(None if exact is None else not exact)
    if dataset:
        def progress(i: int, n: int, name: str) -> None:
            click.echo(f"[{i + 1}/{n}] {name}", err=True)

        avg = average_trace(model, records, [k for k in kinds if k != "hidden"] or kinds, samples, window, seed, bf16, progress)
        paths = write_average(avg, out_dir)
        click.echo(f"{avg.kept} of {avg.tried} facts answered correctly and traced (noise scale {avg.noise_scale:.3f})")
        for k, ys in avg.effects.items():
            click.echo(f"{k:6s} peak at layer {avg.peak(k)} (mean effect {max(ys):.3f})")
    else:
        results = trace_fact(model, prompt, subject, kinds, out_dir, samples=samples, window=window, seed=seed, bf16=bf16)
        r0 = results[0]
        click.echo(f"{prompt!r} -> {r0.answer!r}: p = {r0.clean_prob:.3f} clean, {r0.corrupted_prob:.3f} with {subject!r} noised")
        for r in results:
            cells = ", ".join(f"{r.tokens[t]!r}@{layer} {e:+.3f}" for t, layer, e in r.strongest(3))
            click.echo(f"{r.kind:6s} strongest: {cells}")
        paths = [Path(out_dir) / f"trace_{r.kind}.png" for r in results] + [Path(out_dir) / "trace.json"]
    for p in paths:
        click.echo(f"wrote {p}")


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the diagnostics as a JSON list.")
@handle_errors
def check(files: tuple[str, ...], as_json: bool) -> None:
    """Validate scripts without loading a model: syntax, names, parameters, expectations.

    Exit status 0 when every script is valid, 2 when one is not.
    """
    from .lang import check_source, read_script
    from .registry import get_registry

    registry = get_registry()
    all_diags: list[Any] = []
    invalid = False
    for path in files:
        source = read_script(path)
        script, diags = check_source(source, path, registry)
        all_diags.extend(diags)
        errors = [d for d in diags if d.is_error]
        invalid = invalid or script is None or bool(errors)
        if as_json:
            continue
        for d in diags:
            click.echo(d.render(source), err=True)
        if script is not None and not errors:
            click.echo(f"{path}: ok ({_edit_count(script)})")
        else:
            click.echo(f"{path}: {len(errors)} error{'s' if len(errors) != 1 else ''}", err=True)
    if as_json:
        click.echo(json.dumps([d.to_dict() for d in all_diags], indent=2, ensure_ascii=False))
    if invalid:
        sys.exit(int(ExitCode.INVALID))


def _edit_count(script: Any) -> str:
    """``3 edits``, or ``1003 edits, 1000 of them rows of 1 data file``."""
    rows = sum(script.data[(s.path, s.format)].source.rows for s in script.data_statements())
    n = len(script.edits()) + rows
    files = len({(s.path, s.format) for s in script.data_statements()})
    return f"{n} edit{'s' if n != 1 else ''}" + (f", {rows} of them rows of {files} data file{'s' if files != 1 else ''}" if files else "")


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--write", is_flag=True, help="Rewrite the file in place instead of printing.")
@click.option("--check", "check_only", is_flag=True, help="Print nothing; exit 1 if the file is not formatted.")
@handle_errors
def fmt(file: str, write: bool, check_only: bool) -> None:
    """Print a script in its canonical form (idempotent; comments are kept)."""
    from .lang import ScriptError, format_script, parse, read_script

    source = read_script(file)
    try:
        script = parse(source, file)
    except ScriptError as exc:
        click.echo(exc.render(), err=True)
        sys.exit(int(ExitCode.INVALID))
    formatted = format_script(script)
    if check_only:
        if formatted != source:
            click.echo(f"{file}: would reformat", err=True)
            sys.exit(1)
        return
    if write:
        if formatted != source:
            with open(file, "w", encoding="utf-8") as f:
                f.write(formatted)
        return
    click.echo(formatted, nl=False)


# -- bench and plan ------------------------------------------------------------------------
@main.command()
@click.argument("data", type=click.Path(dir_okay=True), required=False)
@click.option("--method", default=None, help="The editing method (see `kedsl plugins`).")
@click.option("--suite", default=None, help="Run a whole study instead of one file: `knowedit` (its six datasets x --methods).")
@click.option("--methods", "method_list", default=None, metavar="A,B,...", help="With --suite: the methods, one column each.")
@click.option("--datasets", "dataset_list", default=None, metavar="A,B,...", help="With --suite: only these of its datasets.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="With --suite: the folder holding the study's files (default: $KEDSL_DATA_DIR, else ../shared/data).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="With --suite: where each cell's JSON, the per-dataset JSON and the table go (default bench/results/SUITE).")
@click.option("--model", "model_ref", default="smollm2-135m", show_default=True, help="Alias, local directory, .gguf file or hub id.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True,
              help="The dtype the model's weights are loaded in (edits are written back in it).")
@click.option("--split", type=click.Choice(["all", "tune", "heldout", "train"]), default=None,
              help="Only the records of this split of SPLITS.json (found beside the data or above it); default: all, heldout with --suite.")
@click.option("--limit", type=click.IntRange(min=0), default=None, help="At most this many records (per dataset with --suite).")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True, help="First record (index in the file, or position in --split).")
@click.option("--format", "data_format", type=click.Choice(list(DATA_FORMATS)), default=None, help="Data format (default: detected).")
@click.option("--mode", type=click.Choice(["single", "sequential", "batch"]), default="single", show_default=True,
              help="single: each edit alone, undone after measuring; sequential: edits accumulate, measured at the end; batch: groups of --batch-size in one call.")
@click.option("--batch-size", type=int, default=None, help="Edits per method call in --mode batch, and per turn in --mode sequential for batch methods (default 1).")
@click.option("--checkpoints", type=int, default=None, metavar="N",
              help="--mode sequential: measure every N edits (the degradation curve: JSON `curve`, and a PNG with --plot).")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False), default=None,
              help="With --checkpoints: save a resumable state at each checkpoint here; the same command again resumes after the last one.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), default=None, help="With --checkpoints: draw the curve into this PNG.")
@click.option("--param", "param_args", multiple=True, metavar="NAME=VALUE",
              help="A method parameter (repeatable), e.g. --param layer=8; with --suite METHOD.NAME=VALUE.")
@click.option("--metrics", "metric_list", default=None, metavar="A,B,...",
              help="Measure only these (default: the dataset's KnowEdit metrics, e.g. efficacy, generalization, portability, locality, fluency, efficacy_gen, pre_efficacy).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write aggregate, per-case values and config here.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the method's randomness.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True,
              help="Where the model runs (cuda: under torchrun, each rank's GPU of its LOCAL_RANK).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Run as this many ranks on this machine (torch's elastic launcher, as torchrun --standalone); single and batch modes.")
@handle_errors
def bench(data: str | None, method: str | None, suite: str | None, method_list: str | None, dataset_list: str | None,
          data_dir: str | None, out_dir: str | None, model_ref: str, dtype: str, split: str | None, limit: int | None, offset: int,
          data_format: str | None, mode: str, batch_size: int | None, checkpoints: int | None, checkpoint_dir: str | None,
          plot_out: str | None, param_args: tuple[str, ...], metric_list: str | None, json_out: str | None, seed: int, device: str,
          workers: int | None) -> None:  # fmt: skip
    """Benchmark a method on DATA (ZsRE, KnowEdit, WikiBio, ConvSent, Sanitation or
    CounterFact records): the KnowEdit table (Edit Succ., Generalization, Portability,
    Locality, Fluency and each dataset's own) plus efficacy_gen and the pre-edit efficacy,
    with the number of cases behind each value. With --suite, a whole study: every dataset
    x every method of --methods, resumable cell by cell. Under `torchrun --nproc-per-node N
    -m kedsl bench ...` (or with --workers N) the ranks split the edits; rank 0 writes."""
    settings_model = {"dtype": dtype, "device": device}
    if suite is not None:
        if data is not None or method is not None:
            raise UsageError("--suite runs its own datasets with --methods", "drop DATA and --method, or drop --suite")
        _bench_suite(suite, method_list, dataset_list, data_dir, out_dir, model_ref, settings_model, split or "heldout", limit, param_args,
                     seed, workers)  # fmt: skip
        return
    if data is None or method is None:
        raise UsageError("kedsl bench needs DATA and --method (or --suite)", "e.g. kedsl bench zsre.json --method rome")
    from .evaluation.datasets import read_cases, split_indices
    from .evaluation.runner import BenchSettings, check_settings, check_splittable, data_sha256, parse_param_args, run_bench, select_metrics
    from .registry import get_registry

    registry = get_registry()
    metrics = [m.strip() for m in metric_list.split(",") if m.strip()] if metric_list is not None else None
    settings = BenchSettings(method=method, mode=mode, batch_size=batch_size or 1, metrics=metrics, seed=seed,
                             checkpoints=checkpoints, checkpoint_dir=checkpoint_dir)  # fmt: skip
    spec = check_settings(registry, settings)  # everything that needs no model fails fast
    check_splittable(settings, _world_size(workers))
    if plot_out is not None and checkpoints is None:
        raise UsageError("--plot draws the curve of --checkpoints N", "add --checkpoints, e.g. --checkpoints 100")
    settings.params = parse_param_args(spec, param_args)
    loaded = read_cases(data, format=data_format, limit=limit, offset=offset, indices=split_indices(data, split or "all"))
    cases = loaded.cases
    fmt = cases[0].format if cases else data_format
    select_metrics(registry, metrics, fmt)
    if not cases:
        raise DataError(f"{data}: no usable records (offset {offset}, limit {limit})", "check --offset/--limit and the file")
    if _launched_as_workers(workers):
        return
    with _joined_ranks() as ranks:
        say = _main_rank_echo(ranks)
        say(f"{len(cases)} cases from {data}" + (f" ({len(loaded.skipped)} records skipped)" if loaded.skipped else "")
            + f"; loading {model_ref} ..." + (f" ({ranks.world} ranks)" if ranks else ""))  # fmt: skip
        from .model.loading import load_model

        model = load_model(model_ref, settings_model, registry)
        info = {"data_path": str(Path(data).absolute()), "data_sha256": data_sha256(data), "format": fmt, "limit": limit, "offset": offset,
                "split": split or "all", "dtype": dtype, "skipped_records": [{"index": i, "why": why} for i, why in loaded.skipped]}  # fmt: skip
        eta = _Eta()
        result = run_bench(model, cases, settings, registry=registry, data=info, ranks=ranks,
                           progress=lambda done, total, message: say(f"[{done}/{total}{eta(done, total)}] {message}"))  # fmt: skip
        if ranks and not ranks.is_main:
            return
        click.echo(result.table())
        if result.curve:
            click.echo(_curve_table(result.curve))
        if json_out:
            with open(json_out, "w", encoding="utf-8") as f:
                json.dump(result.to_json(), f, indent=1, ensure_ascii=False)
            click.echo(f"wrote {json_out}", err=True)
        if plot_out:
            from .plots import degradation_curves

            label = f"{spec.name} on {Path(model_ref).name}"
            click.echo(f"wrote {degradation_curves([(label, result.curve)], 'sequential edits', plot_out)}", err=True)


@main.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_png", required=True, type=click.Path(dir_okay=False), help="The PNG to draw.")
@click.option("--title", default="sequential edits", show_default=True)
@handle_errors
def curve(results: tuple[str, ...], out_png: str, title: str) -> None:
    """Draw the degradation curves of `kedsl bench --mode sequential --checkpoints N`
    result files: one file, a line per metric; several, a panel per metric and a line per
    file (labelled by method, and model where they differ)."""
    runs = []
    for path in results:
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: not a readable JSON result ({exc})", "give files written by kedsl bench --json") from None
        if not isinstance(doc, dict) or not doc.get("curve"):
            raise DataError(f"{path} holds no curve", "run kedsl bench --mode sequential --checkpoints N --json FILE")
        runs.append((doc.get("config", {}), doc["curve"]))
    models = {c.get("model") for c, _ in runs}
    base = [str(c.get("method")) + (f" ({c.get('model')})" if len(models) > 1 else "") for c, _ in runs]
    labels = list(base)
    for i, (config, _) in enumerate(runs):
        twins = [j for j, other in enumerate(base) if other == base[i]]
        if len(twins) > 1:  # runs of one method: told apart by the parameters where they differ, else the file
            # the parameters the method ran with (preset included), or, in older files, those given
            used = [runs[j][0].get("params") or runs[j][0].get("given_params") or {} for j in twins]
            mine = config.get("params") or config.get("given_params") or {}
            # a key only some files have (added later) counts where its value is set at all
            differ = [f"{k}={_plain_value(v)}" for k, v in mine.items() if any(u.get(k) != v for u in used) and (v or all(k in u for u in used))]
            labels[i] += f" ({', '.join(differ) if differ else Path(results[i]).stem})"
    labelled = [(label, cv) for label, (_, cv) in zip(labels, runs)]
    from .plots import degradation_curves

    click.echo(f"wrote {degradation_curves(labelled, title, out_png)}")


def _plain_value(value: Any) -> str:
    """A parameter value as a legend shows it: a file path by its name."""
    text = str(value)
    return Path(text).name if "/" in text else text


class _Eta:
    """`, ETA 3m20s` from the pace since the first progress report that moved."""

    def __init__(self) -> None:
        self.start: tuple[float, int] | None = None

    def __call__(self, done: int, total: int) -> str:
        now = time.monotonic()
        if self.start is None or done < self.start[1]:
            self.start = (now, done)
            return ""
        t0, d0 = self.start
        if done <= d0 or done >= total:
            return ""
        left = (now - t0) / (done - d0) * (total - done)
        return f", ETA {_duration(left)}"


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _curve_table(curve: list[dict[str, Any]]) -> str:
    """The degradation curve as a Markdown table (values in %, fluency as it is)."""
    metrics = [m for m in curve[0]["metrics"]]
    head = "| edits | " + " | ".join(metrics) + " | method s |"
    rows = [head, "|" + "---:|" * (len(metrics) + 2)]
    for p in curve:
        cells = []
        for m in metrics:
            v = p["metrics"][m]
            cells.append("" if v is None else f"{v:.2f}" if m.startswith("fluency") else f"{100 * v:.2f}")
        rows.append(f"| {p['edits']} | " + " | ".join(cells) + f" | {p['seconds']:.0f} |")
    return "\n".join(rows)


def _bench_suite(suite: str, method_list: str | None, dataset_list: str | None, data_dir: str | None, out_dir: str | None,
                 model_ref: str, settings_model: dict[str, Any], split: str, limit: int | None, param_args: tuple[str, ...], seed: int,
                 workers: int | None) -> None:  # fmt: skip
    from .evaluation.runner import parse_param_args
    from .evaluation.suite import check_suite, run_suite
    from .registry import get_registry

    registry = get_registry()
    methods = [m.strip() for m in (method_list or "").split(",") if m.strip()]
    datasets = [d.strip() for d in dataset_list.split(",") if d.strip()] if dataset_list else None
    check_suite(registry, suite, methods, datasets)  # names first: no model loaded for a typo
    per_method: dict[str, list[str]] = {}
    for arg in param_args:
        name, dot, rest = arg.partition(".")
        if not dot or name not in methods:
            raise UsageError(f"--param {arg!r}: with --suite write METHOD.NAME=VALUE for one of the methods", f"methods: {', '.join(methods)}")
        per_method.setdefault(name, []).append(rest)
    params = {m: parse_param_args(registry.method(m), args) for m, args in per_method.items()}
    where = Path(data_dir or os.environ.get("KEDSL_DATA_DIR") or "../shared/data")
    out = Path(out_dir or f"bench/results/{suite}")
    if _launched_as_workers(workers):
        return
    with _joined_ranks() as ranks:
        say = _main_rank_echo(ranks)
        from .model.loading import load_model

        say(f"loading {model_ref} ..." + (f" ({ranks.world} ranks)" if ranks else ""))
        model = load_model(model_ref, settings_model, registry)
        run_suite(model, registry, suite, methods, where, out, limit=limit, split=split, params=params, datasets=datasets,
                  seed=seed, say=say, ranks=ranks)  # fmt: skip
        if ranks and not ranks.is_main:
            return
        table = out / f"{suite}_table.md"
        click.echo(table.read_text(encoding="utf-8"))
        click.echo(f"wrote {out}/ (a JSON per cell and per dataset) and {table}", err=True)


@main.command()
@click.option("--model", "model_ref", default="smollm2-135m", show_default=True, help="Alias, local directory, .gguf file or hub id.")
@click.option("--layers", "layer_list", required=True, metavar="L|A..B|A,B,...", help="The layers whose MLP-output keys to gather, e.g. 6, 2..8 or 2,4.")
@click.option("--samples", type=click.IntRange(min=1), default=8192, show_default=True, help="Tokens of the corpus (the methods' mom2_samples).")
@click.option("--corpus", default="model", show_default=True, help="`model` (text sampled from the model), `questions` (shipped), a .txt/.jsonl file or a datasets name (the methods' stats_corpus).")
@click.option("--seed", type=int, default=0, show_default=True, help="The seed of the sampled corpus (the methods' seed).")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True,
              help="Where the model runs (cuda: under torchrun, each rank's GPU of its LOCAL_RANK).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Run as this many ranks on this machine (as torchrun --standalone).")
@handle_errors
def stats(model_ref: str, layer_list: str, samples: int, corpus: str, seed: int, dtype: str, device: str, workers: int | None) -> None:
    """Compute and cache the second-moment statistics ROME, MEMIT and AlphaEdit weight their
    updates by, so later edits and benchmarks find them. Under `torchrun --nproc-per-node N
    -m kedsl stats ...` (or with --workers N) the ranks share the corpus and one all-reduce
    adds their parts; rank 0 writes each layer's file."""
    layers = _layer_list(layer_list)
    if _launched_as_workers(workers):
        return
    with _joined_ranks() as ranks:
        say = _main_rank_echo(ranks)
        from .model.loading import load_model
        from .registry import get_registry
        from .toolkit.stats import second_moments, stats_path

        say(f"loading {model_ref} ..." + (f" ({ranks.world} ranks)" if ranks else ""))
        model = load_model(model_ref, {"dtype": dtype, "device": device}, get_registry())
        started = time.perf_counter()
        second_moments(model, layers, corpus, samples, seed, ranks=ranks)
        say(f"statistics for layers {', '.join(map(str, layers))} over {samples} tokens in {time.perf_counter() - started:.1f} s")
        for layer in layers:
            say(f"cached {stats_path(model, layer, corpus, samples, seed)}")


def _layer_list(text: str) -> list[int]:
    """``6``, ``2..8`` or ``2,4,6`` (as a method's ``layers`` parameter) as a list of layers."""
    from .evaluation.runner import parse_param_value
    from .registry.params import Param, Range

    try:
        value = parse_param_value(Param("layers", "layers"), text)
    except UsageError:
        raise UsageError(f"--layers {text!r} is not a layer list", "e.g. --layers 6, --layers 2..8 or --layers 2,4") from None
    return value.to_list() if isinstance(value, Range) else [value] if isinstance(value, int) else list(value)


# -- distributed runs (torchrun, --workers) ----------------------------------------------------
def _world_size(workers: int | None) -> int:
    """How many ranks this command runs as: --workers, else the launcher's WORLD_SIZE."""
    from .distributed import launched_world_size

    return workers or launched_world_size()


def _launched_as_workers(workers: int | None) -> bool:
    """With --workers N > 1: run this same command (without --workers) as N ranks on this
    machine and return True once they are done; the ranks did the work."""
    from .distributed import launch_local, launched_world_size

    if workers is None or workers == 1:
        return False
    if launched_world_size() > 1:
        raise UsageError("--workers starts its own ranks; under torchrun leave it out", "torchrun's --nproc-per-node sets the number of ranks")
    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip or arg == "--workers" or arg.startswith("--workers="):
            skip = arg == "--workers"
            continue
        argv.append(arg)
    launch_local(workers, argv)
    return True


@contextlib.contextmanager
def _joined_ranks() -> Iterator[Any]:
    """The run's :class:`~kedsl.distributed.Ranks` when a launcher started this process as
    one of several ranks (None otherwise), left when the block ends."""
    from .distributed import ranks_from_environment

    ranks = ranks_from_environment()
    try:
        yield ranks
    finally:
        if ranks is not None:
            ranks.close()


def _main_rank_echo(ranks: Any) -> Callable[[str], None]:
    """Print progress on stderr from rank 0 only (it reports the whole run)."""
    if ranks is not None and not ranks.is_main:
        return lambda message: None
    return lambda message: click.echo(message, err=True)


@main.command()
@click.argument("method")
@click.option("--model", "model_ref", default="smollm2-135m", show_default=True, help="The base model the editor is trained for.")
@click.option("--data", "data_files", multiple=True, required=True, type=click.Path(dir_okay=True), help="Training records (repeatable; any layout `kedsl bench` reads).")
@click.option("--val", "val_file", type=click.Path(dir_okay=True), default=None, help="Validation records (default: the last --val-size training examples are held back).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="The editor's folder (a checkpoint there is resumed).")
@click.option("--param", "param_args", multiple=True, metavar="NAME=VALUE", help="A hyper-parameter of the method's editor (repeatable).")
@click.option("--max-steps", type=int, default=2000, show_default=True, help="Stop after this many steps (in all, across resumed runs).")
@click.option("--max-minutes", type=float, default=None, help="Stop after this much training time (in all, across resumed runs).")
@click.option("--batch-size", type=int, default=4, show_default=True, help="Training edits per step.")
@click.option("--lr", type=float, default=1e-4, show_default=True, help="Adam's learning rate for the editor.")
@click.option("--val-every", type=int, default=100, show_default=True, help="Validate (and checkpoint) every this many steps.")
@click.option("--val-size", type=int, default=50, show_default=True, help="Validation examples.")
@click.option("--patience", type=int, default=5, show_default=True, help="Stop after this many validations without a better score.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--db", default=None, type=click.Path(dir_okay=False), help="Provenance database (default: $KEDSL_DB, else ./kedsl.db).")
@handle_errors
def train(method: str, model_ref: str, data_files: tuple[str, ...], val_file: str | None, out_dir: str, param_args: tuple[str, ...],
          max_steps: int, max_minutes: float | None, batch_size: int, lr: float, val_every: int, val_size: int, patience: int,
          seed: int, db: str | None) -> None:  # fmt: skip
    """Train METHOD's editor (mend, serac) for a base model, with progress, validation,
    early stopping and checkpoints: run the same command again after a crash and it
    resumes. The editor (safetensors + JSON with its data's SHA-256 and validation curve)
    goes to --out; the run is recorded in the provenance store."""
    from . import api

    editor = api.train(
        method, model=model_ref, data=list(data_files), val=val_file, out=out_dir, params=api.parse_trainer_params(method, param_args),
        max_steps=max_steps, max_minutes=max_minutes, batch_size=batch_size, lr=lr, val_every=val_every, val_size=val_size,
        patience=patience, seed=seed, db=db, argv=sys.argv,
        progress=lambda step, total, msg: click.echo(f"[{step}/{total}] {msg}", err=True),
    )  # fmt: skip
    best = editor.get("best_score")
    click.echo(f"trained {method} editor in {out_dir}: {editor['steps']} steps ({editor['stopped']}), best validation score "
               f"{best:.4f} at step {editor['best_step']}, {editor['wall_seconds'] / 60:.1f} min")  # fmt: skip


@main.command()
@click.argument("script", type=click.Path(dir_okay=False))
@click.option("--tokens", type=click.IntRange(min=1), default=12, show_default=True, help="Tokens the model says per prompt.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def plan(script: str, tokens: int, as_json: bool) -> None:
    """Show what a script would do, changing nothing: per edit the method, which preset
    applied and why, its parameters after presets, the weights it will touch, what the model says now on the edit and
    expectation prompts, and [already] where the model already gives the target."""
    from . import api

    report = api.plan_report(script, says_tokens=tokens)
    if as_json:
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
        return
    rows = sum(d["rows"] for d in report["data"])
    click.echo(f"model {report['model']} (fingerprint {report['fingerprint'][:16]}): {report['total_edits']} edit(s)"
               + (f" ({rows} of them rows of data files)" if report["data"] else "") + ", nothing changed")  # fmt: skip
    for d in report["data"]:
        click.echo(f"\ndata {d['display']} (line {d['line']}): {d['rows']} rows, {d['format']}"
                   + (f" in the {d['layout']} layout" if d["layout"] else "") + f", sha256 {d['sha256'][:16]}, {d['size']} bytes")
        click.echo(f"   using {d['method']}" + (f" in batch {d['batch']}" if d["batch"] is not None else ", one row at a time"))
        click.echo("   preset  " + d["preset_reason"])
        click.echo("   params  " + ", ".join(f"{k}={v!r}" for k, v in d["params"].items()))
        click.echo(f"   the first {d['shown']} row(s) below")
    for i, e in enumerate(report["edits"], 1):
        mark = "  [already]" if e["already"] else ""
        where = f"line {e['line']}" if e["row"] is None else f"{e['data']} row {e['row']}"
        click.echo(f"\n{i}. {where}: {e['subject']!r} -> {e['target']!r} using {e['method']}{mark}")
        if e["batch"] is not None:
            click.echo(f"   batch {e['batch']}")
        click.echo("   preset  " + e["preset_reason"])
        click.echo("   params  " + ", ".join(f"{k}={v!r}" for k, v in e["params"].items()))
        touches = e["touches"]
        click.echo("   touches " + (", ".join(touches) if touches is not None else "(the method does not say)"))
        acc = e["efficacy_now"]
        click.echo(f"   now     {e['prompt']!r} -> {e['says']!r}" + (f"  (efficacy {acc:.2f})" if acc is not None else ""))
        for x in e["expectations"]:
            for p in x["prompts"]:
                click.echo(f"   expect {x['metric']}: {p['prompt']!r} -> {p['says']!r}")


# -- audit: verify, log, show, revert, replay, export ---------------------------------------
_DB_HELP = "Provenance database (default: $KEDSL_DB, else ./kedsl.db, else the one the model's kedsl.json names)."


def _audit_db_path(db: str | None, model_dir: str | None = None) -> str:
    """--db, else $KEDSL_DB, else ./kedsl.db; when neither exists, the database a model
    directory's kedsl.json names (so `kedsl verify --model out/x` works from anywhere)."""
    from .api.scripts import default_db_path
    from .provenance.queries import read_model_record

    if db:
        return db
    default = str(default_db_path())
    if os.path.exists(default) or model_dir is None:
        return default
    named = ((read_model_record(model_dir) or {}).get("provenance") or {}).get("database")
    if named and os.path.exists(named):
        click.echo(f"using the database {named} named in {model_dir}/kedsl.json", err=True)
        return named
    return default


@main.command()
@click.option("--db", type=click.Path(dir_okay=False), default=None, help=_DB_HELP)
@click.option("--model", "model_dir", type=click.Path(file_okay=False), default=None,
              help="Also recompute this saved model's fingerprint and compare it with the log's.")
@click.option("--key", "public_key", type=click.Path(dir_okay=False), default=None,
              help="With --model: the public key (PEM) the model must be signed with; checks the signature, "
                   "the signed attestation and the database against it.")
@click.option("--identity", default=None, help="With --model: the sigstore identity (e-mail, workflow) of a keyless signature.")
@click.option("--issuer", default=None, help="With --identity: the OIDC issuer of that identity.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def verify(db: str | None, model_dir: str | None, public_key: str | None, identity: str | None, issuer: str | None,
           as_json: bool) -> None:  # fmt: skip
    """Check the audit log: hash chain, anchor, tables against the log, outcome blobs;
    with --model, that every file of the directory is what the log recorded and its
    weights have the recorded fingerprint; with --key, also its signature and attestation.

    Exit status 0 when everything holds, 1 when something does not (the first broken
    event row or the changed file is named), 5 when the database cannot be read, 7 when
    the key is missing, unreadable or of the wrong type, 8 when the signature is not by
    that key (or the model is not signed).
    """
    from .provenance.queries import open_for_reading
    from .provenance.verify import verify_log, verify_model

    if (public_key or identity) and model_dir is None:
        raise UsageError("--key and --identity check a model's signature: give --model DIR too")
    if bool(identity) != bool(issuer):
        raise UsageError("a keyless signature is checked with both --identity and --issuer")
    if public_key is not None:
        from .provenance.signing import load_public_key

        load_public_key(public_key)  # a missing or wrong key is exit 7, before any other work
    with open_for_reading(_audit_db_path(db, model_dir)) as store:
        result = verify_log(store)
        if model_dir is not None and result.ok:
            verify_model(store, model_dir, result, public_key=public_key, identity=identity, oidc_issuer=issuer)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        for f in result.findings:
            label = "FAIL" if f.level == "error" else f.level  # warning, note
            click.echo(f"{label}: {f.message}")
        if result.ok:
            head = result.head or {}
            click.echo(f"ok: {result.events} events, hash chain intact, tables match the log"
                       + (f"; head {head.get('hash')}" if head else ""))
            if result.model:
                m = result.model
                click.echo(f"ok: {m['path']} has fingerprint {m['actual']}, as run {m['run_id']} saved it; every file as recorded")
            if public_key or identity:
                click.echo(f"ok: signed by {public_key or identity}: model.sig and the attestation verify, "
                           "and the database holds the signed lineage")  # fmt: skip
        else:
            where = result.first_broken_event
            click.echo("verification FAILED" + (f" at event {where}" if where else ""), err=True)
    if result.signature_failed:
        sys.exit(int(ExitCode.SIGNATURE))
    if not result.ok:
        sys.exit(int(ExitCode.EXPECTATION_FAILED))


@main.command()
@click.argument("key", type=click.Path(dir_okay=False))
@handle_errors
def keygen(key: str) -> None:
    """Write a new signing key pair: the private key to KEY (readable by you only) and
    the public key to KEY.pub. Keep KEY away from the database and the models it signs;
    a password in $KEDSL_KEY_PASSWORD encrypts it."""
    from .provenance.signing import generate_key, key_id, load_public_key

    private, public = generate_key(key)
    click.echo(f"wrote {private} (private: keep it secret, away from the database) and {public} (public: give it to verifiers)")
    click.echo(f"key id {key_id(load_public_key(public))}")


@main.command()
@click.argument("model_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--key", "private_key", type=click.Path(dir_okay=False), default=None, help="The private key (PEM) to sign with.")
@click.option("--sigstore", is_flag=True, help="Sign keyless with sigstore instead (an OIDC identity; needs network access).")
@click.option("--db", type=click.Path(dir_okay=False), default=None, help=_DB_HELP)
@handle_errors
def sign(model_dir: str, private_key: str | None, sigstore: bool, db: str | None) -> None:
    """Sign a saved model directory and its provenance attestation (OpenSSF Model Signing:
    model.sig over every file). Only a directory whose every file is still what the log
    recorded at save is signed."""
    from .provenance.attestation import sign_saved
    from .provenance.signing import Signer
    from .provenance.store import Store

    if bool(private_key) == sigstore:
        raise UsageError("give exactly one of --key KEY and --sigstore")
    signer = Signer.from_file(private_key) if private_key else None
    with Store.open(_audit_db_path(db, model_dir), create=False) as store:
        res = sign_saved(store, model_dir, signer)
    click.echo(f"signed {res['path']} (run {res['run_id']}, {res['files']} files) with "
               + (f"key {res['key_id'][:16]}" if signer else "sigstore (keyless)"))


def _print_run(run: dict[str, Any], indent: str = "") -> None:
    kind = run.get("kind") or "apply"
    extra = ""
    if run.get("reverts_edit"):
        extra = f" reverts {run['reverts_edit']}"
    elif run.get("replay_of"):
        extra = f" replays {run['replay_of']}"
    from .provenance.queries import format_time

    click.echo(f"{indent}{run['id']}  {kind}{extra}  {run['status']}  {format_time(run['started'])}  "
               f"{run['user']}@{run['host']}")
    if run.get("script_path"):
        click.echo(f"{indent}  script  {run['script_path']} (sha256 {str(run.get('script_sha256'))[:16]})")
    click.echo(f"{indent}  model   {run.get('model_ref')}  {str(run.get('fingerprint_before'))[:16]} -> "
               f"{str(run.get('fingerprint_after'))[:16]}" + (f"  saved to {run['saved_to']}" if run.get("saved_to") else ""))
    if run.get("parent_run"):
        click.echo(f"{indent}  from    {run['parent_run']}")
    files = {}
    for d in run.get("data_files", []):
        files[d["sha256"]] = d["path"]
        click.echo(f"{indent}  data    {d['path']}  {d['rows']} rows, {d['size']} bytes, sha256 {d['sha256'][:16]}  ({d['file']})")
    for e in run.get("edits", []):
        req = e.get("request") or {}
        metrics = ", ".join(
            f"{m['metric']}={'n/a' if m['value'] is None else format(m['value'], '.3g')}{'' if m['passed'] else ' FAIL'}"
            for m in e.get("metrics", [])
        )
        row = f"  ({files.get(e['data_sha256'], e['data_sha256'][:16])} row {e['data_row']})" if e.get("data_sha256") else ""
        click.echo(f"{indent}  {e['id']}  {e['status']:<11} {e['method']:<8} {e['subject']!r} -> {req.get('target', '')!r}"
                   + row + (f"  [{metrics}]" if metrics else ""))


@main.command(name="log")
@click.option("--db", type=click.Path(dir_okay=False), default=None, help=_DB_HELP)
@click.option("--model", "model_dir", type=click.Path(file_okay=False), default=None,
              help="Only the runs that made this saved model (its lineage across runs).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def log_(db: str | None, model_dir: str | None, as_json: bool) -> None:
    """The history of runs and edits, newest first (of one model with --model)."""
    from .provenance.queries import lineage, open_for_reading

    with open_for_reading(_audit_db_path(db, model_dir)) as store:
        runs = lineage(store, model_dir)
    if as_json:
        click.echo(json.dumps(runs, indent=2, default=str))
        return
    if not runs:
        click.echo("no runs recorded yet")
    for run in runs:
        _print_run(run)
        click.echo("")


@main.command()
@click.argument("ident")
@click.option("--db", type=click.Path(dir_okay=False), default=None, help=_DB_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def show(ident: str, db: str | None, as_json: bool) -> None:
    """Show one run or edit (IDENT, or a unique prefix of it) in full."""
    from .provenance.queries import open_for_reading
    from .provenance.queries import show as show_record

    with open_for_reading(_audit_db_path(db)) as store:
        rec = show_record(store, ident)
    if as_json:
        click.echo(json.dumps(rec, indent=2, default=str))
        return
    for key, value in rec.items():
        if key in ("edits", "events", "metrics", "script_text", "data_files", "data_file", "data_sha256", "data_row"):
            continue
        if isinstance(value, (dict, list)):
            value = json.dumps(value, default=str)
        click.echo(f"{key:<20} {value}")
    for d in rec.get("data_files", []):
        click.echo(f"data file            {d['path']}: {d['rows']} rows, {d['format']}, {d['size']} bytes, sha256 {d['sha256']} "
                   f"(read from {d['file']})")  # fmt: skip
    if rec.get("data_file"):
        d = rec["data_file"]
        click.echo(f"data file            {d['path']} row {rec['data_row']} (sha256 {d['sha256']}, {d['size']} bytes)")
    for m in rec.get("metrics", []):
        thr = "reported" if m["op"] is None else f"{m['op']} {m['threshold']}"
        click.echo(f"metric               {m['metric']} = {m['value']} ({thr}) {'pass' if m['passed'] else 'FAIL'}")
    if rec.get("script_text"):
        click.echo("script:\n" + "\n".join("    " + line for line in rec["script_text"].splitlines()))
    if rec.get("edits"):
        click.echo("edits:")
        _print_run({**rec, "edits": rec["edits"]}, indent="  ")
    for ev in rec.get("events", []):
        click.echo(f"event {ev['id']:<6} {ev['kind']:<12} {ev['hash']}")


@main.command()
@click.argument("edit_id")
@click.option("--model", "model_dir", type=click.Path(file_okay=False, exists=True), required=True,
              help="The saved model to remove the edit from.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Where to save the reverted model.")
@click.option("--db", type=click.Path(dir_okay=False), default=None, help=_DB_HELP)
@click.option("--force", is_flag=True, help="Subtract the edit even if the log does not place it in the model's history.")
@click.option("--sign", "sign_key", type=click.Path(dir_okay=False), default=None, help="Sign the result with this private key (PEM).")
@handle_errors
def revert(edit_id: str, model_dir: str, out: str, db: str | None, force: bool, sign_key: str | None) -> None:
    """Remove exactly one edit from a saved model (later edits are kept); record it as a run.
    A member of a batch is removed by recomputing the batch without it."""
    from .api.history import revert as revert_edit
    from .provenance.store import Store

    with Store.open(_audit_db_path(db, model_dir), create=False) as store:
        res = revert_edit(store, edit_id, model_dir, out, force=force, argv=sys.argv, sign=sign_key)
    for name, mode in sorted(res["modes"].items()):
        note = "restored bit-exactly" if mode == "restored" else "changed again later: delta subtracted (not bit-exact)"
        click.echo(f"{name}: {note}")
    if res.get("recomputed"):
        click.echo(f"note: {edit_id} was one of a batch with {', '.join(res['batch'])}; a batch is one update, so this is a "
                   "RECOMPUTE: the run was run again from its recorded script, seed, base model and data without this edit "
                   "(not a subtraction)")  # fmt: skip
    click.echo(f"run {res['run_id']}: reverted {edit_id}; saved to {res['saved_to']} (fingerprint {res['fingerprint_after'][:16]})")


@main.command()
@click.argument("run_id")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Where to save the replayed model.")
@click.option("--db", type=click.Path(dir_okay=False), default=None, help=_DB_HELP)
@click.option("--sign", "sign_key", type=click.Path(dir_okay=False), default=None, help="Sign the result with this private key (PEM).")
@handle_errors
def replay(run_id: str, out: str, db: str | None, sign_key: str | None) -> None:
    """Rerun a recorded run's script on its recorded base model; say whether the result
    has the recorded fingerprint (exit 0 if it does, 1 if not)."""
    from .api.history import replay as replay_run
    from .provenance.store import Store

    with Store.open(_audit_db_path(db), create=False) as store:
        res = replay_run(store, run_id, out, argv=sys.argv, sign=sign_key)
    for name, (was, now) in res["version_differences"].items():
        click.echo(f"note: {name} was {was}, now {now}", err=True)
    verdict = "MATCHES" if res["matches"] else "DIFFERS FROM"
    click.echo(f"run {res['run_id']}: replayed {run_id}; fingerprint {str(res['fingerprint_replayed'])[:16]} "
               f"{verdict} the recorded {str(res['fingerprint_recorded'])[:16]}"
               + (f"; saved to {res['saved_to']}" if res["saved_to"] else ""))
    if not res["matches"]:
        sys.exit(int(ExitCode.EXPECTATION_FAILED))


@main.command()
@click.option("--db", type=click.Path(dir_okay=False), default=None, help=_DB_HELP)
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "html"]), default="jsonl", show_default=True)
@click.option("--run", "run_id", default=None, help="Only this run.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write to this file instead of stdout.")
@handle_errors
def export(db: str | None, fmt: str, run_id: str | None, output: str | None) -> None:
    """An audit report: JSON lines, CSV (one row per edit and metric) or one HTML page."""
    from .provenance.export import export as export_report
    from .provenance.queries import open_for_reading

    with open_for_reading(_audit_db_path(db)) as store:
        text = export_report(store, fmt, run_id)
    if output:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


if __name__ == "__main__":  # pragma: no cover
    main()
