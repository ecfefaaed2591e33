"""LoRA adapters on the LLM (vidmini/families/llava_mini/adapter.py): a fresh one changes nothing, merging computes
what the unmerged layers compute, and a checkpoint that carries them loads through from_pretrained merged."""

from __future__ import annotations

import pytest
import torch

ADAPTER = {"rank": 2, "alpha": 4, "targets": ["q_proj", "v_proj"]}


def llm_logits(model, ids):
    with torch.no_grad():
        return model.language_forward(input_ids=ids).logits[0]  # [L, V]


def test_a_fresh_adapter_is_the_identity_and_sits_on_the_llm_only():
    from vidmini.families.llava_mini import adapter
    from vidmini.testing.tiny_checkpoint import build_model

    plain = build_model("tiny")
    model = build_model("tiny", llm_adapter=ADAPTER)
    names = [n for n, _ in model.named_parameters() if ".lora_" in n]
    assert len(names) == 2 * 2 * len(model.model.layers) and all(n.startswith("model.layers.") for n in names)
    for layer in model.model.layers:  # randomize() drew B too; a fresh adapter has B = 0
        for linear in (layer.self_attn.q_proj, layer.self_attn.v_proj):
            torch.nn.init.zeros_(linear.lora_B)
    model.load_state_dict({k: v for k, v in plain.state_dict().items()}, strict=False)
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    torch.testing.assert_close(llm_logits(model, ids), llm_logits(plain, ids), rtol=0, atol=0)
    assert adapter.merge(model.model.layers) == 2 * len(model.model.layers)
    assert not [n for n, _ in model.named_parameters() if ".lora_" in n]


def test_merging_computes_what_the_adapted_layers_compute():
    from vidmini.families.llava_mini import adapter
    from vidmini.testing.tiny_checkpoint import build_model

    model = build_model("tiny", llm_adapter=ADAPTER)  # B drawn at random: a trained adapter
    ids = torch.tensor([[1, 5, 9, 42, 7, 3]])
    unmerged = llm_logits(model, ids)
    adapter.merge(model.model.layers)
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    torch.testing.assert_close(llm_logits(model, ids), unmerged, rtol=1e-5, atol=1e-5)


def test_a_checkpoint_with_adapters_loads_merged_and_one_without_their_weights_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from vidmini.errors import ModelLoadError
    from vidmini.families.llava_mini.llava_mini import LlavaMiniForCausalLM
    from vidmini.testing.tiny_checkpoint import write_checkpoint

    folder = write_checkpoint(str(tmp_path / "ckpt"), patch_size=48, llm_adapter=ADAPTER)
    saved = load_file(f"{folder}/model.safetensors")
    a, b = saved["model.layers.1.self_attn.v_proj.lora_A"], saved["model.layers.1.self_attn.v_proj.lora_B"]
    model, info = LlavaMiniForCausalLM.from_pretrained(folder, _vidmini_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    merged = saved["model.layers.1.self_attn.v_proj.weight"] + (b @ a) * ADAPTER["alpha"] / ADAPTER["rank"]
    torch.testing.assert_close(model.model.layers[1].self_attn.v_proj.weight, merged)
    assert not [n for n, _ in model.named_parameters() if ".lora_" in n]
    save_file({k: v for k, v in saved.items() if ".lora_" not in k}, f"{folder}/model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="lacks"):
        LlavaMiniForCausalLM.from_pretrained(folder)


def test_a_target_that_is_not_an_attention_projection_is_refused():
    from vidmini.testing.tiny_checkpoint import build_model

    with pytest.raises(ValueError, match="not a linear layer"):
        build_model("tiny", llm_adapter={**ADAPTER, "targets": ["rotary_emb"]})
