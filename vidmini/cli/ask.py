"""`vidmini ask`: answers about one video or image."""

from __future__ import annotations

import json
import os
import sys
from typing import Optional

import typer

from vidmini import errors
from vidmini.cli.options import (
    BatchSizeOpt, DecoderChoice, DecoderOpt, DeviceOpt, DtypeChoice, DtypeOpt, EndOpt, EvidenceOpt, FpsOpt, JsonOpt,
    MaxFramesOpt, MaxNewTokensOpt, MaxQuestionTokensOpt, ModelOpt, ProfileMemoryOpt, QuantizeChoice, QuantizeOpt,
    QuietOpt, SamplingChoice, SamplingOpt, StartOpt, finite, output_path,
)
from vidmini.engine.evidence import DEFAULT_MOMENTS


def _check_range(start: float | None, end: float | None) -> None:
    if start is not None and end is not None and end <= start:
        raise errors.UsageError(f"--end {end:g} is not after --start {start:g}; give a range that holds some video")


def _check_workers(decode_workers: int) -> None:
    """One decoder thread per segment: more threads than cores gain nothing and each opens the file again."""
    cores = os.cpu_count() or 1
    if decode_workers > cores:
        raise errors.UsageError(f"--decode-workers {decode_workers}: this machine has {cores} CPU cores; give at "
                                f"most {cores}")


def _read_questions(questions: list[str]) -> list[str]:
    from vidmini.inputs.questions import check_text, read_stdin

    if questions:
        return check_text(questions)
    if sys.stdin is not None and not sys.stdin.isatty():
        lines = read_stdin(sys.stdin)
        if lines:
            return check_text(lines)
    raise errors.UsageError("no question: give one after the video, or pipe questions (one a line) to stdin")


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
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, callback=finite, help="0 = greedy (the reference's setting)."),
    top_p: Optional[float] = typer.Option(None, "--top-p", min=0.0, max=1.0, callback=finite, help="Nucleus sampling (with --temperature > 0)."),
    seed: Optional[int] = typer.Option(None, "--seed", min=-(2**63), max=2**64 - 1, help="Seed for sampling."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the decoded-frame cache."),
    vision_fp32: bool = typer.Option(False, "--vision-fp32", help="Run CLIP in float32 as the reference does (+0.6 GB)."),
    tokens_per_frame: Optional[int] = typer.Option(None, "--tokens-per-frame", min=1, help="LLaVA-NeXT-Video / LLaVA-OneVision: keep K tokens per frame by VisionZip (default: all of the model's own)."),
    prefusion_tokens: Optional[int] = typer.Option(None, "--prefusion-tokens", min=1, help="LLaVA-Mini: VisionZip keeps K of the vision tokens for pre-fusion (576 in the 8B model, 49 in the demo; faster; changes answers; off by default)."),
    json_out: bool = JsonOpt,
    profile_memory: bool = ProfileMemoryOpt,
    memory_interval: float = typer.Option(0.05, "--memory-interval", min=0.001, callback=finite, help="Seconds between CPU RSS samples with --profile-memory."),
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

    memory = MemoryOutputs(output_path(memory_plot), output_path(memory_snapshot))  # before the model loads
    evidence_plot = output_path(evidence_plot)
    if evidence_plot is not None:
        from vidmini.infra.memory_report import check_plot_available
        from vidmini.infra.outputs import check_evidence_plot

        check_evidence_plot(evidence_plot)
        check_plot_available("--evidence-plot")
        evidence = evidence or DEFAULT_MOMENTS
    from vidmini.families.loading import LoadOptions
    from vidmini.jobs.ask import TextStreamer, ask_job

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
