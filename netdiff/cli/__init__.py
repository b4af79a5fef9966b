"""The ``netdiff`` command: a click group whose subcommands load lazily (``--help`` stays fast,
torch is imported only by the commands that need it)."""
from __future__ import annotations

import importlib
import os
import sys

import click

from netdiff.errors import NetdiffError, describe_resource_error

# command name -> "module:attribute"; one module per command family.
COMMANDS = {
    "nprint": "netdiff.cli.convert:nprint_cmd",
    "pcap2img": "netdiff.cli.convert:pcap2img_cmd",
    "img2pcap": "netdiff.cli.convert:img2pcap_cmd",
    "samples": "netdiff.cli.convert:samples_cmd",
    "demo": "netdiff.cli.convert:demo_cmd",
    "validate": "netdiff.cli.validate:validate_cmd",
    "evaluate": "netdiff.cli.evaluate:evaluate_cmd",
    "train-base": "netdiff.cli.diffusion:train_base_cmd",
    "finetune": "netdiff.cli.diffusion:finetune_cmd",
    "train-controlnet": "netdiff.cli.diffusion:train_controlnet_cmd",
    "generate": "netdiff.cli.diffusion:generate_cmd",
    "batch": "netdiff.cli.batch:batch_cmd",
    "telemetry": "netdiff.cli.telemetry:telemetry_group",
    "app": "netdiff.cli.app:app_cmd",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(name for name, target in COMMANDS.items() if _available(target))

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None or not _available(target):
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


def _available(target: str) -> bool:
    module = target.split(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="netdiff")
def cli():
    """netdiff: synthetic network traffic (pcap <-> nPrint <-> image, diffusion, repair,
    evaluation, telemetry)."""


def main(argv=None):
    """Entry point: user errors are one line on stderr and a non-zero exit, never a traceback."""
    try:
        return cli.main(args=argv, prog_name="netdiff", standalone_mode=False) or 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("netdiff: aborted", err=True)
        return 130
    except NetdiffError as e:
        click.echo(f"netdiff: error: {e}", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("netdiff: interrupted", err=True)
        return 130
    except ImportError as e:    # two dependencies of mismatched versions, named in one line
        from netdiff.model.dependencies import describe_import_failure

        line = describe_import_failure(e)
        if line is None:
            return _internal_error(e)
        click.echo(f"netdiff: error: {line}", err=True)
        return 1
    except Exception as e:
        # the machine ran out of something (space, memory, file handles) or forbids a write:
        # the command's output is as it was or marked unfinished, so a rerun redoes it
        line = describe_resource_error(e, _step(sys.argv[1:] if argv is None else argv))
        if line is not None:
            click.echo(f"netdiff: error: {line}", err=True)
            return 1
        return _internal_error(e)   # a bug, not a user error: still one line unless asked for more


def _step(argv) -> str:
    """The command a command line runs (``pcap2img``, ``telemetry train``), for error lines."""
    words = [str(a) for a in argv if not str(a).startswith("-")][:2]
    if not words:
        return "netdiff"
    return " ".join(words) if words[0] == "telemetry" and len(words) > 1 else words[0]


def _internal_error(e: Exception) -> int:
    if os.environ.get("NETDIFF_DEBUG"):
        raise e
    click.echo(f"netdiff: internal error: {e.__class__.__name__}: {e} "
               "(set NETDIFF_DEBUG=1 for the traceback)", err=True)
    return 2


def run():
    sys.exit(main())


if __name__ == "__main__":
    run()
