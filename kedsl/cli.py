"""The ``kedsl`` command line: a thin layer over the library.

Every command that needs no model (check, fmt, plugins, log, ...) must not import torch:
model-touching imports happen inside the command functions.
"""
from __future__ import annotations

import functools
import json
import logging
import sys
from typing import Any, Callable

import click

from .errors import ExitCode, KedslError


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
            click.echo(f"error: {exc.message}", err=True)
            if exc.hint:
                click.echo(f"hint: {exc.hint}", err=True)
            sys.exit(int(exc.exit_code))
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
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


if __name__ == "__main__":  # pragma: no cover
    main()
