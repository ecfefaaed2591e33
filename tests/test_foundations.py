"""Foundations: the KV-cache rewind, typed errors, no import cycles, honest loading, transformers' generate
contract, and device timing at stage boundaries."""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

import pytest
import torch

from conftest import REPO


# ---- the KV cache ------------------------------------------------------------------------------------------------
def test_rewind_forgets_the_tail_and_the_next_write_lands_there(tiny_model):
    from vidmini.engine.generate import new_cache, prefill

    model, _ = tiny_model
    embeds = torch.randn(12, model.config.hidden_size)
    cache = new_cache(model, 32)
    with torch.no_grad():
        prefill(model, [embeds[:8]], cache)
        assert cache.length == 8
        cache.rewind(5)
        assert cache.length == 5
        resumed = prefill(model, [embeds[5:12]], cache, start=5)
        fresh = prefill(model, [embeds], new_cache(model, 32))
    torch.testing.assert_close(resumed, fresh)  # positions 5..7 were overwritten, not read


def test_a_rewind_that_does_not_happen_raises(tiny_model, monkeypatch):
    """A transformers release whose Cache.crop stops working must fail loudly, never answer from a stale cache."""
    from transformers import StaticCache

    from vidmini.engine.generate import new_cache, prefill
    from vidmini.engine.kv_cache import CacheRewindError

    model, _ = tiny_model
    cache = new_cache(model, 16)
    with torch.no_grad():
        prefill(model, [torch.randn(6, model.config.hidden_size)], cache)
    monkeypatch.setattr(StaticCache, "crop", lambda self, n: None)
    with pytest.raises(CacheRewindError, match="did not rewind"):
        cache.rewind(2)
    with pytest.raises(CacheRewindError):
        cache.rewind(7)  # beyond what was written


def test_broken_rewind_fails_the_multi_question_answer(tiny_model, monkeypatch):
    from transformers import StaticCache

    from vidmini.engine.engine import Engine, EngineOptions, Query
    from vidmini.engine.kv_cache import CacheRewindError
    from vidmini.inputs.video import FrameBatch

    model, tok = tiny_model
    frames = torch.randint(0, 255, (3, 336, 336, 3), dtype=torch.uint8).numpy()
    engine = Engine(model, tok, EngineOptions(batch_size=3, max_new_tokens=3))
    queries = [Query("What colour is it?"), Query("Who is there?")]
    encoded = engine.encode(iter([FrameBatch(frames, torch.arange(3.0).numpy(), torch.arange(3).numpy())]), 3,
                            queries)
    monkeypatch.setattr(StaticCache, "crop", lambda self, n: None)
    with pytest.raises(CacheRewindError):
        engine.answer(encoded, queries)


# ---- typed errors ------------------------------------------------------------------------------------------------
def test_exit_codes_come_from_the_error_types_not_their_names():
    from vidmini import errors
    from vidmini.inputs.video import VideoError

    assert errors.exit_code_for(errors.UsageError("x")) == 2
    assert errors.exit_code_for(VideoError("x")) == errors.exit_code_for(errors.BadInput("x")) == 3
    assert errors.exit_code_for(errors.ModelLoadError("x")) == 4
    assert errors.exit_code_for(errors.DeviceOutOfMemory("x")) == 5
    assert errors.exit_code_for(torch.OutOfMemoryError("x")) == 5
    assert errors.exit_code_for(KeyboardInterrupt()) == 130

    class ModelLoadError(Exception):  # same name, not ours: an unexpected error
        pass

    assert errors.exit_code_for(ModelLoadError("x")) == 1


def test_no_string_matching_on_exception_names():
    source = (REPO / "vidmini" / "errors.py").read_text()
    assert "__name__ ==" not in source and "__name__ in" not in source


# ---- import structure ----------------------------------------------------------------------------------------------
def _import_graph() -> dict[str, set[str]]:
    root = REPO / "vidmini"
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
               for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):  # lazy imports inside functions count too
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}
    return graph


def test_no_import_cycles():
    graph = _import_graph()
    cycles = []

    def visit(node, path):
        for nxt in graph[node]:
            if nxt == path[0]:
                cycles.append(" -> ".join(path + [nxt]))
            elif nxt not in path and len(path) < 8:
                visit(nxt, path + [nxt])

    for start in graph:
        visit(start, [start])
    assert not cycles, cycles[:5]


def _plan_then_ask(tmp_path, capsys, monkeypatch, seconds: int, **config) -> tuple[dict, dict]:
    """`ask --dry-run --json` then `ask --json` on a `seconds`-long 1-fps video, with a tiny checkpoint whose
    config takes `config`: (the plan, the result)."""
    from vidmini.cli import main
    from vidmini.testing.tiny_checkpoint import write_checkpoint
    from vidmini.testing.videos import make_video

    monkeypatch.setenv("VIDMINI_CACHE_DIR", str(tmp_path / "cache"))
    model = write_checkpoint(str(tmp_path / "ck"), **config)
    video = make_video(str(tmp_path / "v.mp4"), seconds, fps=1.0)
    common = ["--model", model, "--max-new-tokens", "2", "--json", "--quiet", video, "What happens?"]
    assert main(["ask", "--dry-run", *common]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert main(["ask", *common]) == 0
    return plan, json.loads(capsys.readouterr().out)


def test_dry_run_and_ask_apply_the_same_capacity_rule(tmp_path, capsys, monkeypatch):
    """A video longer than the context: the dry run plans exactly the frames `ask` then uses."""
    plan, result = _plan_then_ask(tmp_path, capsys, monkeypatch, 300, max_position_embeddings=200)
    assert plan["frames_planned"] == 300 and plan["frames"] < 200
    assert "context" in plan["frames_limited_by"]
    assert result["frames_used"] == plan["frames"]


def test_a_model_reads_no_more_frames_than_it_was_trained_on(tmp_path, capsys, monkeypatch):
    """A config's max_video_frames (the demo model's: the longest clip it was taught) caps the frames kept, spread
    over the whole video, in the dry run and in `ask` alike, though far more would fit in the context."""
    plan, result = _plan_then_ask(tmp_path, capsys, monkeypatch, 120, max_position_embeddings=4096,
                                  max_video_frames=40)
    assert (plan["frames_planned"], plan["frames"], result["frames_used"]) == (120, 40, 40)
    assert plan["frames_limited_by"] == "the model's trained length, 40 frames"
    assert any("one every 3.00 s" in note for note in result["notes"]), result["notes"]


# ---- loading ---------------------------------------------------------------------------------------------------------
def _checkpoint_without_tower(tmp_path: Path) -> Path:
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from vidmini.testing.tiny_checkpoint import write_checkpoint

    path = tmp_path / "ck"
    write_checkpoint(str(path), seed=9)
    AutoModelForCausalLM.from_pretrained(path).model.vision_tower.vision_tower.vision_model.save_pretrained(path / "clip")
    weights = load_file(path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if ".vision_tower." not in k}, path / "model.safetensors",
              metadata={"format": "pt"})
    config = json.loads((path / "config.json").read_text())
    config.update(vision_config=None, mm_vision_tower="clip")
    (path / "config.json").write_text(json.dumps(config))
    return path


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def transformers_warnings():
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    handler = _Collect()
    logging.getLogger("transformers").addHandler(handler)
    yield handler.lines
    logging.getLogger("transformers").removeHandler(handler)
    hf_logging.set_verbosity(before)


def test_tower_from_mm_vision_tower_is_not_reported_missing(tmp_path, transformers_warnings, monkeypatch):
    import vidmini  # noqa: F401
    import vidmini.families.llava_mini.checkpoint as checkpoint
    from transformers import AutoModelForCausalLM

    path = _checkpoint_without_tower(tmp_path)
    AutoModelForCausalLM.from_pretrained(path)
    assert not any("MISSING" in line or "newly initialized" in line for line in transformers_warnings)
    # Control: without the declaration, transformers does report the tower keys, so the assertion above can fail.
    monkeypatch.setattr(checkpoint, "tower_in_checkpoint", lambda _: True)
    AutoModelForCausalLM.from_pretrained(path)
    assert any("vision_tower" in line and "MISSING" in line for line in transformers_warnings)


def test_a_checkpoint_missing_other_weights_is_refused(tmp_path):
    import vidmini  # noqa: F401
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from vidmini.errors import ModelLoadError
    from vidmini.testing.tiny_checkpoint import write_checkpoint

    path = tmp_path / "ck"
    write_checkpoint(str(path), seed=3)
    weights = load_file(path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "compressor.query" not in k}, path / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="lacks 1 weights, e.g. model.compressor.query"):
        AutoModelForCausalLM.from_pretrained(path)


# ---- transformers' generate contract --------------------------------------------------------------------------------
def test_generate_takes_transformers_options_and_refuses_unknown_ones(tiny_model):
    from transformers.generation.streamers import BaseStreamer

    model, tok = tiny_model
    ids = torch.tensor([[5, 6, -200, 7, 8]])
    pixels = torch.randn(2, 3, 336, 336)

    class Collect(BaseStreamer):
        def __init__(self):
            self.tokens: list[int] = []

        def put(self, value):
            self.tokens += value.reshape(-1).tolist()

        def end(self):
            pass

    streamer = Collect()
    out = model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=4, do_sample=False, streamer=streamer)
    assert out.shape[0] == 1 and 1 <= out.shape[1] <= 4
    assert streamer.tokens == out[0].tolist()  # inputs_embeds: only new tokens are streamed and returned
    with pytest.raises(ValueError, match="not_an_option"):
        model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=2, not_an_option=1)


# ---- device timing --------------------------------------------------------------------------------------------------
def test_stages_synchronise_their_own_cuda_device(monkeypatch):
    """On CUDA, stage times must include the kernels (synchronise at both boundaries, with or without memory
    profiling), and memory figures must be read from the run's device, not the current one."""
    from vidmini.infra.memory import Recorder

    calls: list[tuple[str, object]] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(("sync", device)))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append(("reset", device)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: calls.append(("peak", device)) or 7)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 9)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)

    timing_only = Recorder(memory=False, device="cuda:1")
    with timing_only.stage("vision encode"):
        pass
    assert calls == [("sync", "cuda:1"), ("sync", "cuda:1")]

    calls.clear()
    profiled = Recorder(memory=True, device="cuda:1")
    with profiled.stage("pre-fusion") as stats:
        pass
    profiled.close()
    assert ("reset", "cuda:1") in calls and ("peak", "cuda:1") in calls
    assert all(device == "cuda:1" for _, device in calls)
    assert stats.device_allocated_peak == 7 and stats.device_reserved_peak == 9


# ---- the GPU check, ready before a GPU is lent ---------------------------------------------------------------------
@pytest.mark.slow
def test_device_check_smoke_runs_every_section(tmp_path):
    import importlib.util

    from conftest import FIXTURES

    spec = importlib.util.spec_from_file_location("device_check", REPO / "bench" / "device_check.py")
    device_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(device_check)
    out = tmp_path / "check.json"
    assert device_check.main(["--smoke", "--fixture", str(FIXTURES), "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["smoke"] and results["machine"].startswith("CPU")
    fixture = results["drift_fixture"]["image"]  # the smoke run skips the video (test_model_fixture covers it)
    assert fixture["fp32_vs_reference_max_abs"] <= 1e-4 and fixture["float16"]["tokens_equal"]
    assert results["drift_8b"]["float16"]["max_abs_logit_diff"] < results["drift_8b"]["bfloat16"]["max_abs_logit_diff"]
    assert "skipped" in results["quantized_8bit"]  # no CUDA here
    assert results["throughput_8b"]["frames"] == 2 and results["throughput_8b"]["speedup"] > 0
    assert results["three_hours_8b"]["frames_used"] == 20 and results["three_hours_8b"]["slope_bytes_per_frame"] > 0
