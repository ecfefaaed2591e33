"""The command line: ask, summarize, probe. Output and exit codes only; the work lives in the modules.

Heavy imports (torch, transformers) happen inside the commands that need them, so `vidmini --help` is instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from vidmini import errors

app = typer.Typer(
    name="vidmini",
    help="Ask questions about hours-long videos on one GPU. LLaVA-Mini turns each frame (1 per second by default) "
    "into one vision token, so a 3-hour video is 10,800 tokens.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
_state = {"debug": False}


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
    """Exit codes: 0 ok, 2 usage, 3 bad input, 4 model cannot be loaded, 5 out of memory, 130 interrupted."""
    _state["debug"] = debug


# ---- shared options ----------------------------------------------------------------------------------------
FpsOpt = typer.Option(1.0, "--fps", help="Frames sampled per second of video.", min=0.001)
MaxFramesOpt = typer.Option(None, "--max-frames", help="Cap the number of frames, spread over the whole video.", min=1)
DecoderOpt = typer.Option("auto", "--decoder", help="auto | pyav | decord. auto picks per file and falls back.")
SamplingOpt = typer.Option("time", "--sampling", help="time (by presentation time) | reference (LLaVA-Mini's frame indices).")
StartOpt = typer.Option(None, "--start", help="Start of the range to sample, in seconds.", min=0)
EndOpt = typer.Option(None, "--end", help="End of the range to sample, in seconds.", min=0)
JsonOpt = typer.Option(False, "--json", help="Machine-readable output on stdout, nothing else there.")


def _probe_record(path: str, fps: float, max_frames, sampling: str, decoder: str) -> dict:
    from vidmini.video import VideoError, choose_backend, make_plan, probe

    record = {"path": path, "ok": False, "error": None}
    try:
        info = probe(path)
        record.update(info.to_dict())
        plan = make_plan(info, sampling, fps, max_frames)
        backend, why = choose_backend(info, plan, decoder)
        record.update(ok=True, sampled_frames=len(plan), decoder=backend, decoder_reason=why)
    except VideoError as err:
        record["error"] = str(err)
    record.pop("path", None)
    return {"path": path, **record}


def _probe_table(record: dict):
    from rich.table import Table

    table = Table(title=record["path"], show_header=False, title_justify="left", min_width=60)
    table.add_column(style="bold cyan")
    table.add_column()
    if not record["ok"]:
        table.add_row("error", f"[red]{record['error']}[/red]")
        return table
    rot = f" (stored {record['width']}x{record['height']}, rotated {record['rotation']}°)" if record["rotation"] else ""
    rows = [
        ("container", record["container"]),
        ("video stream", f"#{record['stream_index']} {record['codec']}, {record['video_streams']} video / "
                         f"{record['audio_streams']} audio stream(s)"),
        ("picture", f"{record['display_width']}x{record['display_height']}{rot}"),
        ("duration", f"{record['duration_s']:.2f} s (from the {record['duration_source']})"),
        ("frames", f"{record['frames'] if record['frames'] else 'not stored'} at "
                   f"{record['fps']:.3f} fps" if record["fps"] else "frame rate unknown"),
        ("start", f"{record['start_s']:.3f} s"),
        ("model sees", f"[bold]{record['sampled_frames']}[/bold] frames"),
        ("decoder", f"{record['decoder']} ({record['decoder_reason']})"),
    ]
    for note in record.get("notes", []):
        rows.append(("note", note))
    for k, v in rows:
        table.add_row(k, str(v))
    return table


@app.command()
def probe(
    files: list[Path] = typer.Argument(..., help="Video files.", show_default=False),
    json_out: bool = JsonOpt,
    fps: float = FpsOpt,
    max_frames: Optional[int] = MaxFramesOpt,
    sampling: str = SamplingOpt,
    decoder: str = DecoderOpt,
) -> None:
    """Show what vidmini sees in each file: streams, rotation, duration, frames sampled, the decoder chosen and why.

    Exit 0 when every file is readable, 3 otherwise.
    """
    from rich.console import Console

    console = Console()
    all_ok = True
    for path in files:
        record = _probe_record(str(path), fps, max_frames, sampling, decoder)
        all_ok &= record["ok"]
        if json_out:
            print(json.dumps(record), flush=True)
        else:
            console.print(_probe_table(record))
    if not all_ok:
        raise typer.Exit(errors.BAD_INPUT)  # the reason is in each file's record


def main(argv: list[str] | None = None) -> int:
    try:
        result = app(args=argv, standalone_mode=False)
        return result if isinstance(result, int) else 0
    except typer.Exit as exit_:
        return exit_.exit_code
    except typer.Abort:
        print("vidmini: interrupted", file=sys.stderr)
        return errors.INTERRUPTED
    except typer.TyperException as err:  # usage errors: typer prints the usage line and the reason
        err.show()
        return getattr(err, "exit_code", errors.USAGE)
    except BaseException as err:  # noqa: BLE001  the one place every error becomes one line + an exit code
        if isinstance(err, SystemExit):
            return err.code if isinstance(err.code, int) else 0
        return errors.report(err, _state["debug"])


def entry() -> None:
    sys.exit(main())
