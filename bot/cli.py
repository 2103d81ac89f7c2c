"""The ``parley`` command line.

This is the composition root: commands that need torch (``engine``, ``train``, ``eval``)
or a platform SDK are imported only when run, so ``parley --help``, ``parley chat`` and the
adapter hosts never load torch.
"""

from __future__ import annotations

import asyncio
import importlib
import signal
import sys
from pathlib import Path
from typing import Any

import click

from bot.errors import ParleyError
from bot.runtime import setup_logging
from bot.settings import Settings, load_settings

# name -> ("module:attribute", one-line help). Loaded on first use.
_LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("bot.launch:run_command", "Run all of Parley in one process (first try, one machine)."),
    "engine": ("engine.service:engine_command", "Run an engine worker (needs torch)."),
    "train": ("engine.train.cli:train_command", "Train a model from conversations."),
    "eval": ("engine.train.cli:eval_command", "Evaluate a checkpoint."),
    "export": ("engine.export:export_command", "Export a checkpoint (transformers' Llama)."),
    "adapter": ("adapters.cli:adapter_group", "Run a platform adapter (web, discord, telegram)."),
    "trainer": ("bot.trainer.cli:trainer_command", "Run the trainer service (archive, retrain)."),
    "retrain": ("bot.trainer.cli:retrain_command", "Ask the trainer service to retrain."),
    "archive": ("bot.archive_cli:archive_group", "Export, import or count archived messages."),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _LAZY_COMMANDS:
            target, _ = _LAZY_COMMANDS[cmd_name]
            module_name, attr = target.split(":")
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as e:
                if (e.name or "").split(".")[0] in {"bot", "engine", "adapters"}:
                    raise
                raise click.ClickException(
                    f"`parley {cmd_name}` needs {e.name!r}, which is not installed here; "
                    "install the engine extra: pip install 'parley[engine]'"
                ) from e
            command: click.Command = getattr(module, attr)
            return command
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _LAZY_COMMANDS[name][1]) for name in _LAZY_COMMANDS]
        for name in super().list_commands(ctx):
            cmd = super().get_command(ctx, name)
            if cmd is not None:
                rows.append((name, cmd.get_short_help_str()))
        with formatter.section("Commands"):
            formatter.write_dl(sorted(rows))


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML settings file (default: $PARLEY_CONFIG, else ./parley.toml if present).",
)
@click.pass_context
def cli(ctx: click.Context, config: Path | None) -> None:
    """Parley: a self-hosted chatbot that learns from your community."""
    try:
        settings = load_settings(config)
    except ParleyError as e:
        raise click.ClickException(str(e)) from None
    setup_logging(settings.log_level)
    ctx.obj = settings


@cli.command()
@click.option("--conversation", default=None, help="Conversation id (default: your user name).")
@click.option("--timeout", "timeout_s", default=120.0, show_default=True, help="Seconds to wait.")
@click.pass_obj
def chat(settings: Settings, conversation: str | None, timeout_s: float) -> None:
    """Talk to the running Parley from the terminal.

    With standard input not a terminal, reads one message per line, prints one reply per
    line and exits at end of input: `echo hello | parley chat`.
    """
    from adapters.terminal import run_chat

    run_async(run_chat(settings, conversation=conversation, timeout_s=timeout_s))


def run_async(coro: Any) -> Any:
    """Run a coroutine; a ParleyError becomes a one-line message and a non-zero exit."""
    try:
        return asyncio.run(coro)
    except ParleyError as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:
        sys.exit(130)


def main() -> None:
    # A shell starts background jobs with SIGINT ignored, and Python then never turns it into
    # KeyboardInterrupt: `parley ... &` could not be stopped the way the docs (and systemd's
    # KillSignal=SIGINT) stop it. Parley always stops on SIGINT.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    cli(prog_name="parley")


if __name__ == "__main__":
    main()
