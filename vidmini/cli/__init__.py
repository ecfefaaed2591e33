"""The command line: ask, summarize, probe, cache (a module each; options.py holds what they share). Output and
exit codes only; the work lives in the modules they call. `main` is the one place every error becomes one line and
an exit code.

Heavy imports (torch, transformers) happen inside the commands that need them, so `vidmini --help` is instant.
"""

from __future__ import annotations

import json
import os
import sys

import typer

from vidmini import errors
from vidmini.cli import ask, cache, probe, summarize
from vidmini.cli.app import app, state
from vidmini.engine.evidence import DEFAULT_MOMENTS

# The commands, in --help's order.
app.command()(probe.probe)
app.command()(ask.ask)
app.command()(summarize.summarize)
app.add_typer(cache.cache_app, name="cache")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every outcome is an exit code. Errors are one line on stderr and, with --json, also one JSON
    object {"error", "exit_code"} on stdout, so a script reading stdout never has to parse stderr."""
    from vidmini.infra import signals

    argv = _optional_count(list(sys.argv[1:] if argv is None else argv), "--evidence", DEFAULT_MOMENTS)
    _accept_click_completion_names()
    restore = signals.install()  # SIGTERM takes Ctrl-C's path (cleanup, one line), exit 143
    try:
        return _main(argv)
    finally:
        restore()


COMPLETE_VAR = "_VIDMINI_COMPLETE"


def _accept_click_completion_names() -> None:
    """click documents `_VIDMINI_COMPLETE=bash_source vidmini`; typer's completion (--install-completion,
    --show-completion) spells it source_bash. Both work."""
    shell, _, action = os.environ.get(COMPLETE_VAR, "").partition("_")
    if action in ("source", "complete") and shell in ("bash", "zsh", "fish", "powershell", "pwsh"):
        os.environ[COMPLETE_VAR] = f"{action}_{shell}"


def _optional_count(argv: list[str], option: str, default: int) -> list[str]:
    """`option` given without a count (last, or followed by anything but a number: a question, another option)
    means `option default`. Typer has no options with an optional value."""
    out = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:]
        out.append(arg)
        if arg == option and (i + 1 == len(argv) or not argv[i + 1].isdigit()):
            out.append(str(default))
    return out


def _interrupted(argv: list[str], cause: BaseException | None) -> int:
    from vidmini.infra.signals import interrupted

    code, message = interrupted(cause)
    return _failed(argv, code, message)


def _main(argv: list[str]) -> int:
    try:
        result = app(args=argv, prog_name="vidmini", standalone_mode=False)  # the name completion keys on
        if result == errors.INTERRUPTED:  # typer swallows Ctrl-C and returns 130
            return _interrupted(argv, None)
        return result if isinstance(result, int) else 0
    except typer.Exit as exit_:
        if isinstance(exit_.__cause__, KeyboardInterrupt):  # typer turns Ctrl-C into a silent Exit(130)
            return _interrupted(argv, exit_.__cause__)
        return exit_.exit_code
    except typer.Abort as abort:
        return _interrupted(argv, abort.__cause__)
    except typer.TyperException as err:  # usage errors: typer prints the usage line and the reason
        err.show()
        code = getattr(err, "exit_code", errors.USAGE)
        _json_error(argv, code, err.format_message())
        return code
    except KeyboardInterrupt as err:  # SIGTERM or Ctrl-C outside typer's own handling
        return _interrupted(argv, err)
    except BaseException as err:  # noqa: BLE001  the one place every error becomes one line + an exit code
        if isinstance(err, SystemExit):
            return err.code if isinstance(err.code, int) else 0
        code, message = errors.report(err, state["debug"])
        _json_error(argv, code, message)
        return code


def _failed(argv: list[str], code: int, message: str) -> int:
    print(f"vidmini: {message}", file=sys.stderr)
    _json_error(argv, code, message)
    return code


def _json_error(argv: list[str], code: int, message: str) -> None:
    if "--json" in argv:
        print(json.dumps({"error": message, "exit_code": code}), flush=True)


def entry() -> None:
    sys.exit(main())
