"""`vidmini probe`: what vidmini sees in each file."""

from __future__ import annotations

import json
from typing import Optional

import typer

from vidmini import errors
from vidmini.cli.options import DecoderChoice, DecoderOpt, FpsOpt, JsonOpt, MaxFramesOpt, SamplingChoice, SamplingOpt


def _probe_record(path: str, fps: float, max_frames, sampling: str, decoder: str) -> dict:
    from vidmini.inputs.sources import Sampling, plan_video
    from vidmini.inputs.video import choose_backend

    record = {"path": path, "ok": False, "error": None}
    try:
        planned = plan_video(path, Sampling(sampling, fps, max_frames))  # the same plan `ask` makes
        record.update(planned.info.to_dict())
        backend, why = choose_backend(planned.info, planned.plan, decoder)
        record.update(ok=True, sampled_frames=len(planned.plan), decoder=backend, decoder_reason=why,
                      notes=planned.notes)
    except (errors.BadInput, errors.UsageError, OSError) as err:  # one bad file must not cost the others their lines
        record["error"] = errors.first_line(err)
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


def probe(
    files: list[str] = typer.Argument(..., help="Video files.", show_default=False),
    json_out: bool = JsonOpt,
    fps: float = FpsOpt,
    max_frames: Optional[int] = MaxFramesOpt,
    sampling: SamplingChoice = SamplingOpt,
    decoder: DecoderChoice = DecoderOpt,
) -> None:
    """Show what vidmini sees in each file: streams, rotation, duration, frames sampled, the decoder chosen and why.

    Exit 0 when every file is readable, 3 otherwise.
    """
    from rich.console import Console

    sampling, decoder = sampling.value, decoder.value
    console = Console()
    all_ok = True
    for path in files:
        record = _probe_record(path, fps, max_frames, sampling, decoder)
        all_ok &= record["ok"]
        if json_out:
            print(json.dumps(record), flush=True)
        else:
            console.print(_probe_table(record))
    if not all_ok:
        raise typer.Exit(errors.BAD_INPUT)  # the reason is in each file's record
