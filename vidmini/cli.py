"""The command line: ask, summarize, probe. Output and exit codes only; the work lives in the modules.

Heavy imports (torch, transformers) happen inside the commands that need them, so `vidmini --help` is instant.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from vidmini import errors
from vidmini.families.checkpoint_files import DEFAULT_MODEL
from vidmini.engine.evidence import DEFAULT_MOMENTS
from vidmini.inputs.questions import DEFAULT_MAX_QUESTION_TOKENS

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
    """Exit codes: 0 ok, 2 usage, 3 bad input, 4 model cannot be loaded, 5 out of memory, 130 interrupted (Ctrl-C),
    143 terminated (SIGTERM)."""
    _state["debug"] = debug


# ---- shared options ----------------------------------------------------------------------------------------
class DecoderChoice(str, Enum):
    auto = "auto"
    pyav = "pyav"
    decord = "decord"


class SamplingChoice(str, Enum):
    time = "time"
    reference = "reference"


class DtypeChoice(str, Enum):
    auto = "auto"
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


class QuantizeChoice(str, Enum):
    none = "none"
    bit8 = "8bit"
    bit4 = "4bit"


def _finite(value: float | None) -> float | None:
    """Float options: click's ranges let nan and inf through (every comparison with nan is false)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def _check_range(start: float | None, end: float | None) -> None:
    if start is not None and end is not None and end <= start:
        raise errors.UsageError(f"--end {end:g} is not after --start {start:g}; give a range that holds some video")


def _check_workers(decode_workers: int) -> None:
    """One decoder thread per segment: more threads than cores gain nothing and each opens the file again."""
    cores = os.cpu_count() or 1
    if decode_workers > cores:
        raise errors.UsageError(f"--decode-workers {decode_workers}: this machine has {cores} CPU cores; give at "
                                f"most {cores}")


def _check_chapters(chapter_minutes: float | None, fps: float) -> None:
    """A chapter shorter than the time between two sampled frames would hold no frame: each is a question to
    answer and a sum kept on the device, so a tiny value must not become thousands of them."""
    if chapter_minutes and chapter_minutes * 60 < 1 / fps:
        raise errors.UsageError(f"--chapter-minutes {chapter_minutes:g} is shorter than the {1 / fps:g} s between two "
                                f"frames at --fps {fps:g}; give at least {1 / fps / 60:.4g} (or 0 for none)")


FpsOpt = typer.Option(1.0, "--fps", help="Frames sampled per second of video.", min=0.001, callback=_finite)
MaxFramesOpt = typer.Option(None, "--max-frames", help="Cap the number of frames, spread over the whole video.", min=1)
DecoderOpt = typer.Option(DecoderChoice.auto, "--decoder", help="auto picks per file and falls back.")
SamplingOpt = typer.Option(SamplingChoice.time, "--sampling", help="time: by presentation time; reference: LLaVA-Mini's frame indices.")
StartOpt = typer.Option(None, "--start", help="Start of the range to sample, in seconds.", min=0, callback=_finite)
EndOpt = typer.Option(None, "--end", help="End of the range to sample, in seconds.", min=0, callback=_finite)
JsonOpt = typer.Option(False, "--json", help="Machine-readable output on stdout, nothing else there.")
EvidenceOpt = typer.Option(None, "--evidence", metavar="[N]", min=1, help="After each answer, the N moments of the "
                           "video it drew on most (default 3), from its attention to the frames.")


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


@app.command()
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


ModelOpt = typer.Option(DEFAULT_MODEL, "--model", envvar="VIDMINI_MODEL",
                        help="Hugging Face Hub id or local folder of a checkpoint (LLaVA-Mini, LLaVA-NeXT-Video, "
                        "LLaVA-OneVision), or `demo`.")
def _check_device(value: str) -> str:
    if re.fullmatch(r"auto|cpu|cuda(:\d+)?", value) is None:
        raise typer.BadParameter(f"{value!r} is not a device; use auto, cpu, cuda or cuda:N")
    return value


DeviceOpt = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N.", callback=_check_device)
DtypeOpt = typer.Option(DtypeChoice.auto, "--dtype", help="auto = float16 on GPU, float32 on CPU.")
QuantizeOpt = typer.Option(QuantizeChoice.none, "--quantize", help="bitsandbytes, CUDA only. Vision parts stay full precision.")
# The options `ask` and `summarize` share, declared once.
BatchSizeOpt = typer.Option(None, "--batch-size", min=1, help="Frames per vision batch (default: from free memory).")
MaxNewTokensOpt = typer.Option(512, "--max-new-tokens", min=1, help="Longest answer, in tokens.")
MaxQuestionTokensOpt = typer.Option(DEFAULT_MAX_QUESTION_TOKENS, "--max-question-tokens", min=1, help="Refuse longer "
                                    "questions: each question runs through pre-fusion with every frame, so its length "
                                    "multiplies the work.")
ProfileMemoryOpt = typer.Option(False, "--profile-memory", help="Measure memory per stage: on stderr and in --json "
                                "(ask), in each record (summarize).")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress display.")


def _read_questions(questions: list[str]) -> list[str]:
    from vidmini.inputs.questions import check_text, read_stdin

    if questions:
        return check_text(questions)
    if sys.stdin is not None and not sys.stdin.isatty():
        lines = read_stdin(sys.stdin)
        if lines:
            return check_text(lines)
    raise errors.UsageError("no question: give one after the video, or pipe questions (one a line) to stdin")


@app.command()
def ask(
    video: str = typer.Argument(..., help="A video file (or an image).", show_default=False),
    questions: Optional[list[str]] = typer.Argument(None, help="One or more questions; read from stdin when none.",
                                                    show_default=False),
    model: str = ModelOpt,
    device: str = DeviceOpt,
    dtype: DtypeChoice = DtypeOpt,
    quantize: QuantizeChoice = QuantizeOpt,
    fps: float = FpsOpt,
    max_frames: Optional[int] = MaxFramesOpt,
    start: Optional[float] = StartOpt,
    end: Optional[float] = EndOpt,
    sampling: SamplingChoice = SamplingOpt,
    decoder: DecoderChoice = DecoderOpt,
    batch_size: Optional[int] = BatchSizeOpt,
    decode_workers: int = typer.Option(1, "--decode-workers", min=1, help="Decode time segments in N parallel threads (PyAV). 1 = one decoder using FFmpeg's own threads, which measured faster on 2 cores."),
    max_new_tokens: int = MaxNewTokensOpt,
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, callback=_finite, help="0 = greedy (the reference's setting)."),
    top_p: Optional[float] = typer.Option(None, "--top-p", min=0.0, max=1.0, callback=_finite, help="Nucleus sampling (with --temperature > 0)."),
    seed: Optional[int] = typer.Option(None, "--seed", min=-(2**63), max=2**64 - 1, help="Seed for sampling."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the decoded-frame cache."),
    vision_fp32: bool = typer.Option(False, "--vision-fp32", help="Run CLIP in float32 as the reference does (+0.6 GB)."),
    tokens_per_frame: Optional[int] = typer.Option(None, "--tokens-per-frame", min=1, help="LLaVA-NeXT-Video / LLaVA-OneVision: keep K tokens per frame by VisionZip (default: all of the model's own)."),
    prefusion_tokens: Optional[int] = typer.Option(None, "--prefusion-tokens", min=1, help="LLaVA-Mini: VisionZip keeps K of the vision tokens for pre-fusion (576 in the 8B model, 49 in the demo; faster; changes answers; off by default)."),
    json_out: bool = JsonOpt,
    profile_memory: bool = ProfileMemoryOpt,
    memory_interval: float = typer.Option(0.05, "--memory-interval", min=0.001, callback=_finite, help="Seconds between CPU RSS samples with --profile-memory."),
    memory_snapshot: Optional[str] = typer.Option(None, "--memory-snapshot", help="CUDA: write the allocator history here (open it at pytorch.org/memory_viz)."),
    memory_plot: Optional[str] = typer.Option(None, "--memory-plot", help="Write a PNG of memory over time, stages shaded (needs matplotlib)."),
    evidence: Optional[int] = EvidenceOpt,
    evidence_plot: Optional[str] = typer.Option(None, "--evidence-plot", metavar="FILE.png", help="Write a PNG of each answer's attention "
                                                "over video time, its moments marked (implies --evidence; needs matplotlib)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print the plan (frames, batch, expected peak memory) from the config and the probe; load nothing."),
    max_question_tokens: int = MaxQuestionTokensOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Answer QUESTIONS about VIDEO. Answers stream to stdout; progress and notes go to stderr.

    Several questions share one pass over the video. Decoded frames are cached, so asking again is fast.
    """
    from vidmini.families.checkpoint_files import check_checkpoint
    from vidmini.inputs.paths import check_input_file, is_image

    sampling, decoder, dtype, quantize = sampling.value, decoder.value, dtype.value, quantize.value
    _check_range(start, end)
    _check_workers(decode_workers)
    # Everything a user can get wrong about the input and --model is refused here, before torch is imported.
    check_input_file(video, "image file" if is_image(video) else "video file")  # stat() only: in a blink
    from vidmini.inputs.sources import Sampling, check_input

    sampling_opts = Sampling(sampling, fps, max_frames, start, end)
    check_input(video, sampling_opts)  # not a video, --start/--end outside it
    check_checkpoint(model)
    if dry_run:
        from vidmini.infra.memory_report import dry_run as plan_run
        from vidmini.infra.memory_report import print_dry_run

        plan = plan_run(model, video, sampling_opts, dtype, quantize, device, batch_size, max_new_tokens,
                        _read_questions(questions) if questions else [], tokens_per_frame, prefusion_tokens)
        print(json.dumps(plan)) if json_out else print_dry_run(plan)
        return
    asked = _read_questions(questions or [])
    from vidmini.infra.memory_report import MemoryOutputs

    memory = MemoryOutputs(_output_path(memory_plot), _output_path(memory_snapshot))  # before the model loads
    evidence_plot = _output_path(evidence_plot)
    if evidence_plot is not None:
        from vidmini.infra.memory_report import check_plot_available
        from vidmini.infra.outputs import check_evidence_plot

        check_evidence_plot(evidence_plot)
        check_plot_available("--evidence-plot")
        evidence = evidence or DEFAULT_MOMENTS
    from vidmini.jobs.ask import TextStreamer, ask_job
    from vidmini.families.loading import LoadOptions

    result = ask_job(
        LoadOptions(model, device, dtype, quantize, vision_fp32, tokens_per_frame), video, asked, memory,
        profile_memory=profile_memory, memory_interval=memory_interval, max_new_tokens=max_new_tokens,
        prefusion_tokens=prefusion_tokens, sampling=sampling_opts, decoder=decoder, batch_size=batch_size,
        decode_workers=decode_workers, temperature=temperature, top_p=top_p, seed=seed, use_cache=not no_cache,
        progress=not quiet, max_question_tokens=max_question_tokens, evidence=evidence or 0,
        evidence_plot=str(evidence_plot) if evidence_plot is not None else None,
        streamer=None if json_out else (lambda engine, queries: TextStreamer(engine, queries, len(queries) > 1)),
    )
    if json_out:
        print(json.dumps(result))


@app.command()
def summarize(
    paths: Optional[list[str]] = typer.Argument(None, help="Video files and folders.", show_default=False),
    out: str = typer.Option(..., "--out", "-o", help="The JSON Lines report (created, or resumed)."),
    markdown: Optional[str] = typer.Option(None, "--markdown", help="Also render the report as Markdown here."),
    question: Optional[list[str]] = typer.Option(None, "--question", help="An extra question for every file (repeatable)."),
    chapter_minutes: Optional[float] = typer.Option(
        None, "--chapter-minutes", min=0, callback=_finite, help="Chapter length. Default: 10 min for videos over 20 min, none below; 0 = none."),
    glob: Optional[str] = typer.Option(None, "--glob", help="Only files whose name (or relative path) matches, e.g. '*.mp4'."),
    recursive: bool = typer.Option(True, "--recursive/--no-recursive", help="Descend into sub-folders."),
    force: bool = typer.Option(False, "--force", help="Redo files already in the report."),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first file that fails."),
    devices: Optional[str] = typer.Option(None, "--devices", help="Comma-separated devices, one worker each (e.g. cuda:0,cuda:1)."),
    ray_address: Optional[str] = typer.Option(
        None, "--ray", metavar="auto|ADDRESS", help="Run on a Ray cluster: auto joins the one RAY_ADDRESS or `ray start` "
        "names, else starts a local one; ADDRESS joins that one. Files must be on a filesystem every node shares. "
        "Needs pip install 'vidmini[ray]'."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="With --ray: how many workers (default: one per GPU of the cluster; on CPUs one per node)."),
    model: str = ModelOpt,
    device: str = DeviceOpt,
    dtype: DtypeChoice = DtypeOpt,
    quantize: QuantizeChoice = QuantizeOpt,
    fps: float = FpsOpt,
    max_frames: Optional[int] = MaxFramesOpt,
    decoder: DecoderChoice = DecoderOpt,
    max_new_tokens: int = MaxNewTokensOpt,
    batch_size: Optional[int] = BatchSizeOpt,
    max_question_tokens: int = MaxQuestionTokensOpt,
    profile_memory: bool = ProfileMemoryOpt,
    evidence: Optional[int] = EvidenceOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Summarize every video under PATHS into a JSON Lines report, one record per file as soon as it is done.

    Rerunning the same command skips files already in the report (same file, same prompt) and redoes changed
    ones. With --markdown and no PATHS, only renders the existing report. Exit 0 when every file of this run was
    summarized, 3 when some failed (each failure is recorded with its reason) or no video was found.

    Files that vidmini did not write are never replaced: --out must be a vidmini report (or new, or empty) and
    --markdown a rendering vidmini wrote; otherwise exit 2 before any work (--force does not change this).
    One process writes a report at a time: a second summarize on the same --out exits 2 at once.
    """
    from vidmini.infra.outputs import check_summarize_outputs, lock_path, report_lock
    from vidmini.jobs.report import write_markdown
    from vidmini.jobs.summarize import SummarizeOptions, summary_line

    decoder, dtype, quantize = decoder.value, dtype.value, quantize.value
    out, markdown = _output_path(out), _output_path(markdown)
    if not paths:
        if markdown is None:
            raise errors.UsageError("give video files or folders to summarize (or --markdown to render)")
        if not out.exists():
            raise errors.BadInput(f"{out}: no such report")
        check_summarize_outputs(out, markdown, render_only=True)
        count = write_markdown(str(out), str(markdown))
        print(f"vidmini: rendered {count} record(s) to {markdown}", file=sys.stderr)
        return
    if ray_address is not None:
        from vidmini.jobs.scale.ray import check_options

        check_options(devices, device)  # Ray missing, --devices or cuda:N: one line, exit 2
    elif workers is not None:
        raise errors.UsageError("--workers goes with --ray (--devices starts one worker per device)")
    _check_chapters(chapter_minutes, fps)
    check_summarize_outputs(out, markdown)  # before any work: a typo costs one line, never a file
    _check_summarize_inputs(paths)
    from vidmini.families.checkpoint_files import check_checkpoint
    from vidmini.inputs.questions import check_text

    extra = check_text(list(question or []))  # as `ask` checks its questions: blank or not UTF-8 is exit 2
    check_checkpoint(model)
    outputs = tuple(os.path.realpath(p) for p in (out, lock_path(out), markdown) if p is not None)
    options = SummarizeOptions(
        questions=extra, chapter_minutes=chapter_minutes, glob=glob, recursive=recursive, force=force,
        fail_fast=fail_fast, fps=fps, max_frames=max_frames, decoder=decoder, max_new_tokens=max_new_tokens,
        batch_size=batch_size, profile_memory=profile_memory, model_name=model, outputs=outputs,
        max_question_tokens=max_question_tokens, evidence=evidence or 0)
    with report_lock(out):  # before torch is imported: a second run on the same report is refused at once
        from vidmini.families.loading import LoadOptions
        from vidmini.jobs.placement import Placement, summarize_job

        placement = Placement(devices=[d.strip() for d in (devices or "").split(",") if d.strip()],
                              ray_address=ray_address, workers=workers)
        done, skipped, failed, earlier_failed = summarize_job(
            LoadOptions(model, device, dtype, quantize), placement, paths, str(out), options, progress=not quiet)
        if markdown is not None:
            write_markdown(str(out), str(markdown))
    print(f"vidmini: {summary_line(str(out), done, skipped, failed, earlier_failed)}", file=sys.stderr)
    if failed:
        raise typer.Exit(errors.BAD_INPUT)


def _output_path(path: str | None) -> Path | None:
    """An output option as a Path, once it is known not to be a URL (Path would drop a slash of it)."""
    from vidmini.inputs.paths import check_not_url

    if path is None:
        return None
    check_not_url(path, "the path of a local file")
    return Path(path)


def _check_summarize_inputs(paths: list[str]) -> None:
    """Each given path, before any work: a typo, a URL, a FIFO, socket or device (which would block the first
    open()) is one line; files and folders go on (a broken video becomes a failed record, not a stop)."""
    from vidmini.inputs.paths import check_not_url, special_kind

    for path in paths:
        check_not_url(path, "the path of a video file or folder")
        try:
            mode = os.stat(path).st_mode
        except OSError:  # a typo'd input is one line before any work, not a report holding a "no such file" record
            raise errors.BadInput(f"{path}: no such file or folder") from None
        kind = special_kind(mode)
        if kind is not None:
            raise errors.BadInput(f"{path}: is {kind}, not a video file or folder")


cache_app = typer.Typer(help="The decoded-frame cache: show its entries and sizes, or clear them.",
                        invoke_without_command=True)
app.add_typer(cache_app, name="cache")


@cache_app.callback()
def cache_show(ctx: typer.Context, json_out: bool = JsonOpt) -> None:
    """Show the cache folder, each entry (source video, frames, size, last use) and the total against the cap.

    The cache lives in VIDMINI_CACHE_DIR (default ~/.cache/vidmini/frames) and holds at most VIDMINI_CACHE_MAX_GB
    (default 8) in all; the least recently used entries are evicted to make room.
    """
    if ctx.invoked_subcommand is not None:
        return
    from vidmini.inputs import cache

    root, found = cache.cache_root(), cache.entries()
    total, limit = sum(e["bytes"] for e in found), cache.limit_bytes()
    if json_out:
        print(json.dumps({"root": str(root), "limit_bytes": limit, "total_bytes": total, "entries": found}))
        return
    cap = f"{limit / 1024**3:.1f} GB" if limit is not None else "invalid VIDMINI_CACHE_MAX_GB"
    print(f"{root}: {len(found)} entr{'y' if len(found) == 1 else 'ies'}, {total / 1e6:.1f} MB (cap {cap})")
    for e in reversed(found):  # most recently used first
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["last_used"]))
        print(f"  {e['key']}  {e['bytes'] / 1e6:9.1f} MB  {e['frames'] or '?':>6} frames  {used}  {e['source'] or '(damaged)'}")


@cache_app.command("clear")
def cache_clear(
    older_than: Optional[str] = typer.Option(None, "--older-than", help="Only entries unused for this long: 30d, 12h, 90m, 3600s (a bare number is days)."),
    json_out: bool = JsonOpt,
) -> None:
    """Remove cache entries (all, or those unused for --older-than) and temp folders left by killed runs."""
    from vidmini.inputs import cache

    try:
        age = cache.parse_age(older_than) if older_than is not None else None
    except ValueError:
        raise errors.UsageError(f"--older-than {older_than!r}: give a duration such as 30d, 12h or 90m")
    removed = cache.clear(older_than_s=age)
    freed = sum(e["bytes"] for e in removed)
    if json_out:
        print(json.dumps({"removed": removed, "freed_bytes": freed}))
    else:
        print(f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}, {freed / 1e6:.1f} MB, from {cache.cache_root()}")


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
        code, message = errors.report(err, _state["debug"])
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
