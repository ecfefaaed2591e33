"""The `vidmini` Typer application and its root options (--debug, --version); vidmini.cli adds the commands."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="vidmini",
    help="Ask questions about hours-long videos on one GPU. LLaVA-Mini turns each frame (1 per second by default) "
    "into one vision token, so a 3-hour video is 10,800 tokens.",
    add_completion=True,  # --install-completion / --show-completion: bash, zsh, fish (and _VIDMINI_COMPLETE)
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: rich's tables cut option names at 80 columns and eat [brackets]
    context_settings={"help_option_names": ["-h", "--help"]},
)
state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        from vidmini import __version__

        print(f"vidmini {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: bool = typer.Option(False, "--debug", help="Show a full traceback on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Exit codes: 0 ok, 2 usage, 3 bad input, 4 model cannot be loaded, 5 out of memory, 130 interrupted (Ctrl-C),
    143 terminated (SIGTERM)."""
    state["debug"] = debug
