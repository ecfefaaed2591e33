"""--evidence: the re-scored attention equals the model's own, a checkpoint made to look at one frame gets that
frame's time back under every sampling, nothing changes without the option, and the outputs keep their rules."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
import torch

from vidmini.engine.evidence import PLOT_SOFTWARE, clock, describe, moments

BRIGHT = (40.0, 43.0)  # seconds of the test video that are white; every other frame is black


# ---- the signal ----------------------------------------------------------------------------------------------
def test_rescored_attention_equals_the_eager_attention_weights():
    """Rows captured by the hooks and scored against the cache give exactly the attention the model computes,
    summed over each frame's K tokens (here 4), averaged over heads (and over the query positions), per layer:
    for the queries and for the baseline position right after the frames."""
    from vidmini.engine.generate import decode_step, new_cache, positioned, prefill
    from vidmini.engine.relevance import QueryCapture
    from vidmini.families.interface import LinearPositions
    from vidmini.testing.tiny_checkpoint import build_model

    torch.manual_seed(0)
    model = build_model("tiny", compressor_size=2, seed=3, patch_size=48)
    embed = model.model.embed_tokens
    prefix, suffix = embed(torch.tensor([1, 5, 9])), embed(torch.tensor([7, 8, 11, 12]))
    frames = torch.randn(6 * 4, model.config.hidden_size)  # 6 frames of 4 tokens
    generated = [20, 21, 22]
    cache = new_cache(model, 64)
    capture = QueryCapture(model.get_decoder(), [0, 1])
    after = 3 + 24  # the first position after the frames
    with torch.no_grad():
        prefill(model, [prefix, frames], cache, chunk=5)
        llm = positioned(model, LinearPositions(), capture.at)  # as the engine calls it: each step's cache index
        with capture.recording(after):
            prefill(llm, [suffix], cache, chunk=3, start=cache.length)  # two chunks: the baseline is in the first
            for token in generated:
                decode_step(llm, token, cache.length, cache)
        ours = capture.frame_attention(cache, first=3, frames=6, per_frame=4, queries_from=after + 3)  # [2, 2, 6]
        model.set_attn_implementation("eager")
        sequence = torch.cat([prefix, frames, suffix, embed(torch.tensor(generated))])[None]
        weights = model.language_forward(inputs_embeds=sequence, output_attentions=True).attentions
    queries = 1 + len(generated)
    per_frame = [w[0, :, :, 3:27].unflatten(-1, (6, 4)).sum(-1).mean(0) for w in weights]  # [positions, 6] per layer
    expected = torch.stack([torch.stack([p[-queries:].mean(0), p[after]]) for p in per_frame], dim=1)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)
    assert not any(layer._forward_pre_hooks for layer in model.get_decoder().layers)


@pytest.mark.parametrize("family", ["llava_mini", "llava_next_video", "llava_onevision"])
def test_the_engine_scores_each_frames_k_tokens_as_the_model_attends(family, tmp_path):
    """Through the engine (prompt around the frames, OneVision's newline after them, K tokens per frame, the
    answer's own tokens fed back), the evidence equals the eager attention of the whole sequence."""
    from vidmini.engine.engine import Engine, EngineOptions, Query
    from vidmini.inputs.video import FrameBatch

    if family == "llava_mini":
        from vidmini.testing.tiny_checkpoint import build_model, build_tokenizer

        tokenizer = build_tokenizer()
        model = build_model("tiny", compressor_size=2, seed=1, vocab_size=len(tokenizer), patch_size=48)
        eager = model
    else:
        from vidmini.families.loading import LoadOptions, load_model
        from vidmini.testing.tiny_video_vlm import write_checkpoint

        model, tokenizer = load_model(LoadOptions(write_checkpoint(str(tmp_path / family), family), "cpu", "float32"))
        eager = model.model
    side = model.geometry.size if family != "llava_mini" else 336
    pixels = np.random.default_rng(0).integers(0, 255, (5, side, side, 3), dtype=np.uint8)
    queries, max_new = [Query("What happens?")], 4
    engine = Engine(model, tokenizer, EngineOptions(max_new_tokens=max_new, evidence=True))
    encoded = engine.encode([FrameBatch(pixels, np.arange(5) * 2.0, np.arange(5))], 5, queries)
    found = {}
    tokens = engine.answer(encoded, queries, on_evidence=found.__setitem__)[0]
    prefix, suffix = engine.frames.pieces(encoded, (0, None), 5, 0)
    fed = model.get_input_embeddings()(torch.tensor(tokens[: max_new - 1], dtype=torch.long))  # EOS is never fed
    frames, k = encoded.buffer.frames(), encoded.buffer.tokens_per_frame
    sequence = torch.cat([prefix, frames, engine.frames.after_frames().to(frames.dtype), suffix, fed])[None]
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        weights = model.language_forward(inputs_embeds=sequence, output_attentions=True).attentions
    n, first = 1 + len(fed), len(prefix)
    per_frame = [weights[i][0, :, :, first : first + 5 * k].unflatten(-1, (5, k)).sum(-1).mean(0)  # [positions, 5]
                 for i in found[0].layers]
    after = first + 5 * k + len(engine.frames.after_frames())
    torch.testing.assert_close(found[0].answer, torch.stack([p[-n:].mean(0) for p in per_frame]), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(found[0].baseline, torch.stack([p[after] for p in per_frame]), atol=1e-5, rtol=1e-4)
    assert found[0].times.tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]


def test_moments_merge_neighbours_and_keep_the_strongest_first():
    scores = np.array([0.0, 1.0, 8.0, 6.0, 0.5, 0.0, 3.0, 0.0, 2.9, 0.0])
    times = np.arange(10) * 2.0 + 100.0
    found = moments(scores, times, 3)
    assert [(m.start_s, m.end_s) for m in found] == [(104.0, 106.0), (112.0, 112.0), (116.0, 116.0)]
    assert found[0].score == pytest.approx(14 / scores.sum())
    assert len(moments(scores, times, 10)) < 10  # frames beside a moment never start one of their own
    assert moments(np.zeros(4), times[:4], 3) == []


def test_times_read_as_a_player_shows_them():
    assert clock(42.9, hours=False) == "0:42" and clock(3725.5, hours=False) == "62:05"
    assert clock(3725.5, hours=True) == "1:02:05"
    found = [{"start_s": 722.5, "end_s": 728.5, "score": 0.41}, {"start_s": 60.5, "end_s": 60.5, "score": 0.05}]
    assert describe(found, 900.0) == "evidence: 12:02–12:08 (41%), 1:00 (5%)"
    assert describe(found, 3600.0) == "evidence: 0:12:02–0:12:08 (41%), 0:01:00 (5%)"


def test_evidence_is_optional_in_the_argument_list():
    from vidmini.cli import _optional_count

    assert _optional_count(["ask", "v.mp4", "q", "--evidence"], "--evidence", 3)[-2:] == ["--evidence", "3"]
    assert _optional_count(["ask", "v.mp4", "--evidence", "q"], "--evidence", 3) == \
        ["ask", "v.mp4", "--evidence", "3", "q"]
    assert _optional_count(["ask", "v.mp4", "--evidence", "5", "q"], "--evidence", 3) == \
        ["ask", "v.mp4", "--evidence", "5", "q"]
    after_dashes = ["ask", "v.mp4", "--", "--evidence"]  # a question that reads "--evidence"
    assert _optional_count(after_dashes, "--evidence", 3) == after_dashes


# ---- a checkpoint that looks at one frame ----------------------------------------------------------------------
def write_video(path, times, fps=4):
    """Black 64x64 frames at presentation times `times` (variable rate allowed), white inside BRIGHT."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width = stream.height = 64
        stream.pix_fmt, stream.options = "yuv420p", {"crf": "18", "preset": "ultrafast"}
        stream.codec_context.time_base = Fraction(1, 1000)
        for t in times:
            value = 255 if BRIGHT[0] <= t < BRIGHT[1] else 0
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), value, np.uint8), format="rgb24")
            frame.pts, frame.time_base = int(round(t * 1000)), Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


QUESTION = "What happens?"  # the question the spotlight checkpoint is made for


def look_at_white(model, tokenizer) -> None:
    """Every LLM layer's last question position attends to the frames that look white, and the first position after
    the frames (the baseline) does not. The residual stream is kept equal to the input at every layer (attention
    and MLP outputs zeroed). Each key is a unit along one direction times how far its position's input lies toward
    a white frame's token and away from a black one's; each query is that direction times how far its input lies
    from the baseline token's toward the question's last token (as they come out of pre-fusion for QUESTION on
    dark frames). The direction is the head's slowest RoPE pair, which turns by < 1e-3 rad over the test's
    positions, so position does not matter."""
    from vidmini.engine.engine import Engine, EngineOptions, Query
    from vidmini.inputs.video import FrameBatch

    pixels = np.stack([np.full((336, 336, 3), v, np.uint8) for v in (255, 0, 0, 0, 0, 0)])
    engine = Engine(model, tokenizer, EngineOptions(batch_size=6))
    encoded = engine.encode([FrameBatch(pixels, np.zeros(6), np.arange(6))], 6, [Query(QUESTION)])
    tokens = encoded.buffer.frames()[:2]  # [2, H]: a white frame's, a black one's (question-independent)
    _, suffix = engine.frames.pieces(encoded, (0, None), 6, 0)
    decoder = model.get_decoder()
    with torch.no_grad():
        for layer in decoder.layers:
            attn, head_dim = layer.self_attn, layer.self_attn.head_dim
            for proj in (attn.o_proj, layer.mlp.down_proj):
                proj.weight.zero_()
            white, black = layer.input_layernorm(tokens)  # [H] each
            baseline, question = layer.input_layernorm(suffix[[0, -1]])  # [H] each
            toward_white, toward_question = white - black, question - baseline
            for proj in (attn.k_proj, attn.q_proj):
                proj.weight.zero_()
                proj.bias.zero_()
            slow = torch.arange(attn.k_proj.out_features // head_dim) * head_dim + head_dim - 1  # per KV head
            attn.k_proj.weight[slow] = toward_white / toward_white.norm() ** 2  # 1 at a white frame, 0 at a black
            slow = torch.arange(attn.q_proj.out_features // head_dim) * head_dim + head_dim - 1  # per head
            gain = 60.0 / toward_question.norm() ** 2  # 60 at the question's last position, 0 at the baseline
            attn.q_proj.weight[slow] = gain * toward_question
            attn.q_proj.bias[slow] = -gain * (toward_question @ baseline)


@pytest.fixture(scope="module")
def spotlight(tmp_path_factory):
    """A tiny checkpoint (with attention biases) whose attention lands on the white frames."""
    from transformers import AutoTokenizer

    from vidmini.families.llava_mini.llava_mini import LlavaMiniForCausalLM
    from vidmini.testing.tiny_checkpoint import write_checkpoint

    folder = write_checkpoint(str(tmp_path_factory.mktemp("spotlight") / "ckpt"), patch_size=48, attention_bias=True)
    model, tokenizer = LlavaMiniForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    look_at_white(model, tokenizer)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evidence_videos")
    return {"cfr": write_video(folder / "cfr.mp4", np.arange(0, 60, 0.5), fps=2),
            # 1 fps for 30 s, then 4 fps: a frame's index says nothing about its time
            "vfr": write_video(folder / "vfr.mp4", list(np.arange(0, 30, 1.0)) + list(np.arange(30, 60, 0.25)))}


def top(run) -> dict:
    assert run.code == 0, run.stderr
    return run.json["answers"][0]["evidence"][0]


def ask(cli, spotlight, video, *extra):
    # one new token: the question's last position is the only query (a generated one would be any word)
    return cli("ask", video, QUESTION, "--model", spotlight, "--max-new-tokens", 1, "--evidence", 1,
               "--json", "-q", *extra)


@pytest.mark.parametrize("case,video,extra,expected", [
    ("every second", "cfr", [], (40.5, 42.5)),  # 1 fps: frames at 40.5, 41.5, 42.5 are white
    ("a range of the video", "cfr", ["--start", 30, "--end", 50], (40.5, 42.5)),  # video time, not range time
    ("a frame every 5 s", "cfr", ["--max-frames", 12], (42.5, 42.5)),  # 2.5, 7.5, ..., 42.5
    ("reference sampling", "cfr", ["--sampling", "reference"], (40.0, 42.5)),  # the frames' own times
    ("variable frame rate", "vfr", [], (40.5, 42.5)),
    ("variable frame rate, reference sampling", "vfr", ["--sampling", "reference"], (40.0, 42.75)),
])
def test_the_top_moment_is_the_white_frames_time(spotlight, videos, cli, case, video, extra, expected):
    found = top(ask(cli, spotlight, videos[video], *extra))
    assert expected[0] <= found["start_s"] <= found["end_s"] <= expected[1], case
    assert found["score"] > 0.9


def test_the_times_hold_when_capacity_subsamples_and_from_the_cache(spotlight, videos, cli, monkeypatch):
    from vidmini.engine.capacity import Capacity
    from vidmini.engine.engine import Engine

    first = ask(cli, spotlight, videos["cfr"], "--max-frames", 24)
    again = ask(cli, spotlight, videos["cfr"], "--max-frames", 24)
    assert again.json["from_cache"] and not first.json["from_cache"]
    assert top(again) == top(first) and 40.0 <= top(first)["start_s"] <= top(first)["end_s"] < 43.0
    # 25 frames fit: the plan is remade as 25 frames over the whole minute, one every 2.4 s (at 42.0 the white one)
    monkeypatch.setattr(Engine, "frame_capacity", lambda self, prompt, *rest: Capacity(25, "memory left (test)"))
    run = ask(cli, spotlight, videos["cfr"], "--no-cache")
    assert run.json["frames_used"] == 25 and top(run)["start_s"] == top(run)["end_s"] == 42.0


# ---- nothing changes without it --------------------------------------------------------------------------------
def test_without_evidence_no_hook_and_the_same_answers(tiny_model):
    from vidmini.engine.engine import Engine, EngineOptions, Query
    from vidmini.inputs.video import FrameBatch

    model, tokenizer = tiny_model
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (6, 336, 336, 3), dtype=np.uint8)
    queries = [Query("What happens?"), Query("What colour is the ball?"), Query("What happens?", 2, 5)]
    layers = model.get_decoder().layers
    hooked = []

    def answers(evidence: bool):
        engine = Engine(model, tokenizer, EngineOptions(max_new_tokens=6, evidence=evidence))
        encoded = engine.encode([FrameBatch(pixels, np.arange(6) + 0.5, np.arange(6))], 6, queries)
        found = {}
        def token(i, t):
            hooked.append(any(layer._forward_pre_hooks for layer in layers))

        tokens = engine.answer(encoded, queries, on_evidence=found.__setitem__, on_token=token)
        return tokens, found, engine.recorder.timings()

    plain, none, timings = answers(False)
    assert hooked and not any(hooked) and none == {} and "evidence" not in timings
    hooked.clear()
    with_evidence, found, _ = answers(True)
    assert all(hooked) and with_evidence == plain
    assert sorted(found) == [0, 1, 2]
    assert found[2].times.tolist() == [2.5, 3.5, 4.5]  # the chapter's own frames
    assert not any(layer._forward_pre_hooks for layer in layers)  # removed after the answers


def test_json_fields_and_text_lines(tiny_checkpoint, cli):
    video = "sample_videos/scenes.mp4"
    plain = cli("ask", video, "What happens?", "--model", tiny_checkpoint, "--max-new-tokens", 3, "--json", "-q")
    run = cli("ask", video, "What happens?", "Where?", "--model", tiny_checkpoint, "--max-new-tokens", 3,
              "--json", "-q", "--evidence", 2)
    assert plain.code == run.code == 0, run.stderr
    assert "evidence" not in plain.json["answers"][0]
    assert run.json["answers"][0]["answer"] == plain.json["answers"][0]["answer"]
    for answer in run.json["answers"]:
        assert 1 <= len(answer["evidence"]) <= 2
        for m in answer["evidence"]:
            assert set(m) == {"start_s", "end_s", "score"} and 0 <= m["start_s"] <= m["end_s"] and 0 < m["score"] <= 1
        scores = [m["score"] for m in answer["evidence"]]
        assert scores == sorted(scores, reverse=True)
    text = cli("ask", video, "What happens?", "Where?", "--model", tiny_checkpoint, "--max-new-tokens", 3, "-q",
               "--evidence")
    assert text.code == 0, text.stderr
    evidence = [i for i, line in enumerate(text.stdout.splitlines()) if line.startswith("evidence: ")]
    second = text.stdout.splitlines().index("Q: Where?")
    assert len(evidence) == 2 and evidence[0] < second < evidence[1]  # each answer's own, right after it
    assert text.stdout.splitlines()[-1].startswith("evidence: ")


# ---- the plot -------------------------------------------------------------------------------------------------
def test_plot_written_and_rewritten_but_never_over_a_users_file(spotlight, videos, cli, tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "evidence.png"
    run = cli("ask", videos["cfr"], QUESTION, "--model", spotlight, "--max-new-tokens", 1, "-q",
              "--evidence-plot", plot)
    assert run.code == 0, run.stderr
    head = plot.read_bytes()[:4096]
    assert head.startswith(b"\x89PNG") and PLOT_SOFTWARE.encode() in head
    assert "evidence: 0:40–0:42" in run.stdout  # --evidence-plot alone implies --evidence
    before = plot.stat().st_mtime_ns
    assert cli("ask", videos["cfr"], QUESTION, "--model", spotlight, "--max-new-tokens", 1, "-q",
               "--evidence-plot", plot).code == 0
    assert plot.stat().st_mtime_ns != before  # our own plot is replaced

    mine = tmp_path / "mine.png"
    mine.write_bytes(b"\x89PNG\r\n\x1a\n not vidmini's")
    for path, words in ((mine, "is not a vidmini evidence plot"), (tmp_path / "no" / "p.png", "does not exist")):
        # a model that does not exist: the path is refused before any load (exit 2, not 4)
        out = cli("ask", videos["cfr"], "What happens?", "--model", tmp_path / "no-model", "--evidence-plot", path)
        assert out.code == 2 and words in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert mine.read_bytes() == b"\x89PNG\r\n\x1a\n not vidmini's"


# ---- summarize -------------------------------------------------------------------------------------------------
def test_summarize_records_carry_evidence_and_the_markdown_links_to_it(spotlight, videos, cli, tmp_path):
    out, md = tmp_path / "report.jsonl", tmp_path / "report.md"
    args = ["summarize", videos["cfr"], "--out", out, "--markdown", md, "--model", spotlight, "--max-new-tokens", 1,
            "--question", QUESTION, "-q"]
    assert cli(*args).code == 0
    assert "evidence" not in json.loads(out.read_text())["answers"][0]
    run = cli(*args, "--evidence", 1)  # asked for now: the record is redone with it
    assert run.code == 0, run.stderr
    record = json.loads(out.read_text())
    found = record["answers"][0]["evidence"]
    assert len(found) == 1 and 40.0 <= found[0]["start_s"] <= found[0]["end_s"] < 43.0
    start, end = found[0]["start_s"], found[0]["end_s"]
    link = f"#t={start:g}" + (f",{end:g}" if end > start else "")
    assert "*Evidence:* [0:40" in md.read_text() and f"{videos['cfr']}{link}>)" in md.read_text()


def test_relevance_is_the_answers_attention_averaged_over_layers():
    from vidmini.engine.engine import Relevance

    answer = torch.tensor([[0.1, 0.3, 0.0], [0.3, 0.1, 0.2]])
    relevance = Relevance(answer, torch.zeros(2, 3), torch.arange(3, dtype=torch.float64), [4, 5])
    torch.testing.assert_close(relevance.scores(), torch.tensor([0.2, 0.2, 0.1]))
    torch.testing.assert_close(relevance.scores([1]), answer[1])
