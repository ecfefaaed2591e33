"""`vidmini summarize`: a folder of videos into a resumable JSON Lines report."""

from __future__ import annotations

import os
import sys
from typing import Optional

import typer

from vidmini import errors
from vidmini.cli.options import (
    BatchSizeOpt, DecoderChoice, DecoderOpt, DeviceOpt, DtypeChoice, DtypeOpt, EvidenceOpt, FpsOpt, MaxFramesOpt,
    MaxNewTokensOpt, MaxQuestionTokensOpt, ModelOpt, ProfileMemoryOpt, QuantizeChoice, QuantizeOpt, QuietOpt,
    finite, output_path,
)


def _check_chapters(chapter_minutes: float | None, fps: float) -> None:
    """A chapter shorter than the time between two sampled frames would hold no frame: each is a question to
    answer and a sum kept on the device, so a tiny value must not become thousands of them."""
    if chapter_minutes and chapter_minutes * 60 < 1 / fps:
        raise errors.UsageError(f"--chapter-minutes {chapter_minutes:g} is shorter than the {1 / fps:g} s between two "
                                f"frames at --fps {fps:g}; give at least {1 / fps / 60:.4g} (or 0 for none)")


def summarize(
    paths: Optional[list[str]] = typer.Argument(None, help="Video files and folders.", show_default=False),
    out: str = typer.Option(..., "--out", "-o", help="The JSON Lines report (created, or resumed)."),
    markdown: Optional[str] = typer.Option(None, "--markdown", help="Also render the report as Markdown here."),
    question: Optional[list[str]] = typer.Option(None, "--question", help="An extra question for every file (repeatable)."),
    chapter_minutes: Optional[float] = typer.Option(
        None, "--chapter-minutes", min=0, callback=finite, help="Chapter length. Default: 10 min for videos over 20 min, none below; 0 = none."),
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
    out, markdown = output_path(out), output_path(markdown)
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
