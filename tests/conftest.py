"""Shared fixtures: paths to ../shared, a tiny random checkpoint built once per session."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

# Tiny models gain nothing from intra-op threads and lose a lot to them on a busy machine (measured 10x under load);
# children started by tests inherit the setting through the environment.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VIDMINI_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures"
CORPUS = SHARED / "videos"


def corpus(name: str) -> Path:
    path = CORPUS / name
    if not path.exists():
        pytest.skip(f"corpus file {name} not present in {CORPUS}")
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """The tiny random checkpoint for end-to-end tests: every code path of the released model, with a coarse CLIP
    patch (7x7 instead of 24x24 patches) so thousands of frames stay cheap. Reference equality and the released
    geometry are tested on shared/fixtures and on 14-pixel patches in test_model_parts."""
    from vidmini.testing.tiny_checkpoint import write_checkpoint

    return Path(write_checkpoint(str(tmp_path_factory.mktemp("tiny") / "ckpt"), patch_size=48))


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    import vidmini  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_checkpoint), AutoTokenizer.from_pretrained(tiny_checkpoint)


def interruptible() -> None:
    """preexec_fn for a child that a test interrupts with SIGINT: a shell that starts the test run in the background
    leaves SIGINT ignored, children inherit that, and Python then never raises KeyboardInterrupt."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def rss_mb() -> float:
    """Resident set size now, from /proc (what the kernel charges us)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


# Two computation paths of one model (batch sizes, prefill chunks, packed questions, CPU kernels: AVX2 vs AVX512)
# round apart: their greedy step logits differed by at most 4e-6 on the tiny checkpoint (logits up to 12). Greedy tokens
# are equal across paths only where each pick leads the runner-up by far more than that, so a test that compares them
# asserts this lead.
GREEDY_LEAD = 1e-4


def lead(logits) -> float:
    """How far the greedy pick leads the runner-up: [..., V] logits -> the smallest lead over the leading dims."""
    top = logits.float().topk(2, dim=-1).values  # [..., 2]
    return float((top[..., 0] - top[..., 1]).min())


# VisionZip's merge: a leftover whose best and second-best targets are within this (cosine similarity) may join
# either, by rounding: fp32 similarities differed from a float64 run of the same weights by at most 6.6e-7 (the
# reference fixture's tower, on AVX2 and AVX512 kernels alike).
MERGE_TIE = 1e-5


def leftovers(x, dominant_idx):
    """The tokens VisionZip did not keep as dominant, ascending, as its merge sees them: [B, N, F], [B, D] -> [B, N - D, F]."""
    import torch

    from vidmini.reduce.visionzip import leftover_indices

    rest = leftover_indices(dominant_idx, x.shape[1])  # [B, N - D]
    return x[torch.arange(len(rest))[:, None], rest]


@pytest.fixture
def greedy_leads(monkeypatch) -> list[float]:
    """The lead (see `lead`) of every greedy pick the engine makes in this test, in order."""
    import vidmini.engine.engine

    leads: list[float] = []
    real = vidmini.engine.engine.greedy

    def recording(logits):
        leads.append(lead(logits))
        return real(logits)

    monkeypatch.setattr(vidmini.engine.engine, "greedy", recording)
    return leads


@pytest.fixture(scope="session")
def three_hour_video(tmp_path_factory) -> Path:
    """10,800 frames at 1 fps, 96x64 H.264, each frame coding its own index (vidmini.testing.videos). Made once
    for the whole run: under pytest-xdist the workers share the parent of their temp folders, and a lock makes
    the first one write it while the others wait."""
    import fcntl

    from vidmini.testing.videos import make_video

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # xdist: the run's folder, shared
    path = shared / "3h.mp4"
    with open(shared / "3h.mp4.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            make_video(str(shared / "3h.partial.mp4"), 3 * 3600, fps=1.0)
            os.replace(shared / "3h.partial.mp4", path)
    return path


class CliRun(NamedTuple):
    """What one CLI run gave: `run.code`, `run.json`, or `code, out, err = run`."""

    code: int
    stdout: str
    stderr: str

    @property
    def json(self):
        return json.loads(self.stdout)


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    """Run `vidmini ARGS...` in this process through the real entry point (vidmini.cli.main): exit code, stdout,
    stderr. The frame cache goes to a temp folder; `stdin=` feeds standard input."""
    from vidmini.cli import main

    monkeypatch.setenv("VIDMINI_CACHE_DIR", str(tmp_path / "cache"))

    def run(*args, stdin: str | None = None) -> CliRun:
        capsys.readouterr()
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return CliRun(code, out.out, out.err)

    return run

