"""The folders a command reads and writes: ``@locks_output("output")`` holds its output's lock while
it runs (netdiff.io.lock), so a second command writing the same folder is refused at once, naming
the first; ``@checks_inputs("img_dir")`` refuses an input folder that a writer left unfinished
(or is writing now), instead of reading half of it."""
from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import click

from netdiff.errors import NetdiffError


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


def checks_inputs(*params: str):
    """Wrap a click command callback so that each folder its ``params`` name (those given and
    existing; a hub id or a file is left alone) is refused when its writer left it unfinished."""

    def wrap(f):
        @functools.wraps(f)
        def run(*args, **kwargs):
            from netdiff.io.lock import LOCK_NAME, unfinished

            for param in params:
                value = kwargs.get(param)
                if value is None or not Path(value).is_dir():
                    continue
                why = unfinished(value)
                if why:
                    raise NetdiffError(f"{value} is unfinished ({why}); run what writes it again, or delete "
                                       f"{Path(value) / LOCK_NAME} to use it as it is")
            return f(*args, **kwargs)

        return run

    return wrap
