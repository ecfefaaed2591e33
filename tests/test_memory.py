"""--profile-memory on CPU with the tiny checkpoint: fields present and consistent, RSS checked independently."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

SAMPLE = str(REPO / "sample_videos" / "scenes.mp4")
RUN = """
import json, sys
from vidmini.cli import main
code = main(sys.argv[1:])
hwm = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print(json.dumps({"code": code, "vmhwm": hwm}), file=sys.stderr)
"""


@pytest.fixture(scope="module")
def profiled(tiny_checkpoint, tmp_path_factory):
    env = dict(os.environ, VIDMINI_CACHE_DIR=str(tmp_path_factory.mktemp("cache")))
    plot = tmp_path_factory.mktemp("plot") / "memory.png"
    out = subprocess.run([sys.executable, "-c", RUN, "ask", "--json", "--profile-memory", "--memory-interval", "0.02", "--memory-plot", str(plot),
                          "--model", str(tiny_checkpoint), "--max-new-tokens", "4", SAMPLE, "What?"],
                         capture_output=True, text=True, env=env, timeout=300)
    stats = json.loads(out.stderr.strip().splitlines()[-1])
    assert stats["code"] == 0, out.stderr
    return json.loads(out.stdout), stats["vmhwm"], out.stderr, plot


def test_report_fields_and_stage_peaks(profiled):
    result, _, stderr, _ = profiled
    memory = result["memory"]
    for stage in ("load", "decode", "vision encode", "pre-fusion", "LLM prefill", "answer decode"):
        assert stage in memory["stages"]
    peak = memory["peak"]["cpu_rss_bytes"]
    assert all(0 < s["cpu_rss_peak_bytes"] <= peak for s in memory["stages"].values())
    assert memory["device_figures"].startswith("none: not a CUDA run")
    assert memory["peak"]["device_allocated_bytes"] is None
    assert {"vision_tower", "compressor", "projector", "prefusion", "llm"} <= set(memory["weights"])
    assert "PROJECTION" in stderr and "memory by stage" in stderr


def test_buffer_and_kv_bytes_follow_the_model_shape(profiled, tiny_checkpoint):
    result, *_ = profiled
    memory = result["memory"]
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    hidden, size = config["hidden_size"], 4  # float32 on CPU
    buffer = memory["token_buffer"]
    assert buffer["frames"] == result["frames_used"] == 40
    assert buffer["bytes"] == buffer["capacity_frames"] * hidden * size and buffer["bytes_per_frame"] == hidden * size
    head_dim = hidden // config["num_attention_heads"]
    kv = 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * size
    assert memory["kv_cache"]["measured"] and memory["kv_cache"]["bytes_per_frame"] == kv
    assert memory["slope_bytes_per_frame"] == hidden * size + kv


def test_rss_agrees_with_the_kernel(profiled):
    result, vmhwm, _, _ = profiled
    sampled = result["memory"]["peak"]["cpu_rss_bytes"]
    assert sampled <= vmhwm * 1.01
    assert vmhwm - sampled < max(40 * 2**20, 0.1 * vmhwm)  # the sampler sees the peak within 40 MB / 10%


def test_projection_by_hand():
    """A card holds (size x 95 % - fixed) / slope frames, capped by the context: numbers worked out by hand."""
    from types import SimpleNamespace

    from vidmini.engine.capacity import projection
    from vidmini.infra.memory import GIB, MB

    config = SimpleNamespace(max_position_embeddings=30000, compressor_size=1)
    fixed = int(24 * 0.95 * GIB) - 3600 * MB  # leaves exactly 3600 frames of 1 MiB on a 24 GB card
    out = projection(fixed, MB, config)
    assert out["24GB"] == {"frames": 3600, "hours_at_1fps": 1.0, "limited_by": "memory"}
    assert out["48GB"] == {"frames": 26947, "hours_at_1fps": 7.49, "limited_by": "memory"}  # + 22.8 GiB / 1 MiB
    assert out["80GB"] == {"frames": 30000, "hours_at_1fps": 8.33, "limited_by": "context"}
    trained = projection(fixed, MB, SimpleNamespace(max_position_embeddings=30000, compressor_size=1,
                                                    max_video_frames=3000))
    assert trained["24GB"] == {"frames": 3000, "hours_at_1fps": 0.83, "limited_by": "trained frames"}
    assert "trained on" in trained["note"]


def test_reported_projection_uses_the_measured_slope(profiled, tiny_checkpoint):
    from types import SimpleNamespace

    from vidmini.engine.capacity import projection

    memory = profiled[0]["memory"]
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert memory["projection"] == projection(memory["fixed_bytes"], memory["slope_bytes_per_frame"],
                                              SimpleNamespace(**config))


def test_memory_plot_is_written(profiled):
    plot = profiled[3]
    assert plot.exists() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dry_run_for_the_released_dimensions(tmp_path, cli):
    """Weights of the 8B model in fp16 from its config alone: the spec's parameter counts (docs §2.4, §4.3)."""
    from vidmini.testing.tiny_checkpoint import build_config, build_tokenizer
    from vidmini.testing.videos import make_video

    build_config("8b", vocab_size=128256, mm_vision_tower="openai/clip-vit-large-patch14-336", vision_config=None,
                 prefusion_layer_num=4).save_pretrained(tmp_path / "cfg")
    build_tokenizer().save_pretrained(tmp_path / "cfg")  # the dry run counts the prompt's tokens
    video = make_video(str(tmp_path / "v.mp4"), 60, fps=1.0)
    out = cli("ask", "--dry-run", "--json", "--dtype", "float16", "--model", tmp_path / "cfg", video)
    assert out.code == 0, out.stderr
    plan = out.json
    params = 8.030e9 + 0.8724e9 + 0.0210e9 + 0.0042e9 + 0.3035e9  # LLM, pre-fusion, projector, compressor, CLIP
    assert plan["weights_bytes"] == pytest.approx(2 * params, rel=0.01)
    assert plan["frames"] == 60 and plan["per_frame_bytes"] == 4096 * 2 + 2 * 32 * 8 * 128 * 2


def test_snapshot_without_cuda_is_a_clear_usage_error(tiny_checkpoint, tmp_path, cli):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    out = cli("ask", "--memory-snapshot", tmp_path / "s.pickle", "--model", tiny_checkpoint, SAMPLE, "What?")
    assert out.code == 2 and "needs a CUDA device" in out.stderr


def test_memory_plot_of_a_run_with_nothing_recorded_has_no_empty_legend(tmp_path):
    import warnings
    from types import SimpleNamespace

    from vidmini.infra.memory_report import write_plot

    pytest.importorskip("matplotlib")
    recorder = SimpleNamespace(sampler=None, timeline=[], t0=0.0, cuda=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "No artists with labels found" is a UserWarning
        write_plot(recorder, str(tmp_path / "m.png"))
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
