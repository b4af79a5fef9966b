"""``@locks_output("output")``: a command holds its output's lock while it runs (netdiff.io.lock),
so a second command writing the same folder is refused at once, naming the first."""
from __future__ import annotations

import functools
from collections.abc import Callable

import click


def locks_output(param: str, folder: bool | Callable[[dict], bool] = True):
    """Wrap a click command callback (put it directly above ``def``) so that it runs holding the
    lock of the path its ``param`` names (nothing when that option is not given). ``folder``
    says whether that path is a folder or a file, or decides it from the call's parameters."""

    def wrap(f):
        @functools.wraps(f)
        def run(*args, **kwargs):
            target = kwargs.get(param)
            if target is None:
                return f(*args, **kwargs)
            from netdiff.io.lock import output_lock

            ctx = click.get_current_context(silent=True)
            command = ctx.command_path if ctx is not None else f.__name__
            is_folder = folder(kwargs) if callable(folder) else folder
            with output_lock(target, command, folder=is_folder,
                             echo=lambda line: click.echo(f"netdiff: {line}", err=True)):
                return f(*args, **kwargs)

        return run

    return wrap
