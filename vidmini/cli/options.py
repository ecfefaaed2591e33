"""Options and checks that several commands share, declared once."""

from __future__ import annotations

import math
import re
from enum import Enum
from pathlib import Path

import typer

from vidmini.families.checkpoint_files import DEFAULT_MODEL
from vidmini.inputs.questions import DEFAULT_MAX_QUESTION_TOKENS


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
    auto = "auto"
    none = "none"
    bit8 = "8bit"
    bit4 = "4bit"


def finite(value: float | None) -> float | None:
    """Float options: click's ranges let nan and inf through (every comparison with nan is false)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


FpsOpt = typer.Option(1.0, "--fps", help="Frames sampled per second of video.", min=0.001, callback=finite)
MaxFramesOpt = typer.Option(None, "--max-frames", help="Cap the number of frames, spread over the whole video.", min=1)
DecoderOpt = typer.Option(DecoderChoice.auto, "--decoder", help="auto picks per file and falls back.")
SamplingOpt = typer.Option(SamplingChoice.time, "--sampling", help="time: by presentation time; reference: LLaVA-Mini's frame indices.")
StartOpt = typer.Option(None, "--start", help="Start of the range to sample, in seconds.", min=0, callback=finite)
EndOpt = typer.Option(None, "--end", help="End of the range to sample, in seconds.", min=0, callback=finite)
JsonOpt = typer.Option(False, "--json", help="Machine-readable output on stdout, nothing else there.")
EvidenceOpt = typer.Option(None, "--evidence", metavar="[N]", min=1, help="After each answer, the N moments of the "
                           "video it drew on most (default 3), from its attention to the frames.")


ModelOpt = typer.Option(DEFAULT_MODEL, "--model", envvar="VIDMINI_MODEL",
                        help="Hugging Face Hub id or local folder of a checkpoint (LLaVA-Mini, LLaVA-NeXT-Video, "
                        "LLaVA-OneVision), or `demo`.")


def _check_device(value: str) -> str:
    if re.fullmatch(r"auto|cpu|cuda(:\d+)?", value) is None:
        raise typer.BadParameter(f"{value!r} is not a device; use auto, cpu, cuda or cuda:N")
    return value


DeviceOpt = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N.", callback=_check_device)
DtypeOpt = typer.Option(DtypeChoice.auto, "--dtype", help="auto = float16 on GPU, float32 on CPU.")
QuantizeOpt = typer.Option(
    QuantizeChoice.auto, "--quantize",
    help="Narrow the LLM's weights. GPU: bitsandbytes 8bit/4bit. CPU: 8bit = int8 weights (decode ~1.5x faster). "
         "auto = 8bit on CPU for the demo model (its answers measured to hold), none otherwise. Vision stays full.")
# The options `ask` and `summarize` share, declared once.
BatchSizeOpt = typer.Option(None, "--batch-size", min=1, help="Frames per vision batch (default: from free memory).")
MaxNewTokensOpt = typer.Option(512, "--max-new-tokens", min=1, help="Longest answer, in tokens.")
MaxQuestionTokensOpt = typer.Option(DEFAULT_MAX_QUESTION_TOKENS, "--max-question-tokens", min=1, help="Refuse longer "
                                    "questions: each question runs through pre-fusion with every frame, so its length "
                                    "multiplies the work.")
ProfileMemoryOpt = typer.Option(False, "--profile-memory", help="Measure memory per stage: on stderr and in --json "
                                "(ask), in each record (summarize).")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress display.")


def output_path(path: str | None) -> Path | None:
    """An output option as a Path, once it is known not to be a URL (Path would drop a slash of it)."""
    from vidmini.inputs.paths import check_not_url

    if path is None:
        return None
    check_not_url(path, "the path of a local file")
    return Path(path)
