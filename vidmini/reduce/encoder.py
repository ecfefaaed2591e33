"""The one place that knows how transformers builds CLIP and SigLIP vision encoders.

VisionZip needs three things from one encoder layer: its input (to recompute queries and keys), its output (the
features it keeps or merges), and the projections of its attention. Everything here reads those through public
module attributes and forward hooks; nothing is patched and the attention implementation is left alone, so every
layer still runs on SDPA or flash attention. If a transformers release renames or reshapes any of it,
`EncoderLayout.of` raises `UnsupportedEncoder` naming what is missing, instead of computing something else.

Checked against transformers 5.24 (`models/clip/modeling_clip.py`, `models/siglip/modeling_siglip.py`):
`CLIPVisionModel` and `SiglipVisionModel` hold `embeddings` and `encoder.layers` directly; `CLIPModel`,
`SiglipModel` and LLaVA-style wrappers hold such a model under `vision_model`. Each layer is
`x + attn(layer_norm1(x))` followed by the MLP block, and its attention is `softmax(q k^T * scale)` over all tokens
(no mask, not causal, no rotary) with `q_proj`, `k_proj`, `num_heads`, `head_dim`, `scale`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch import nn


class UnsupportedEncoder(TypeError):
    """The module is not a vision encoder this wrapper understands (or transformers changed its layout)."""


@dataclass(frozen=True)
class EncoderLayout:
    """Resolved parts of a CLIP/SigLIP-style vision encoder."""

    model: nn.Module  # the module whose forward takes pixel_values and runs embeddings + encoder
    layers: nn.ModuleList
    has_cls: bool  # a CLS token at index 0 (CLIP) or patches only (SigLIP)

    @staticmethod
    def of(vision_model: nn.Module) -> EncoderLayout:
        model = _unwrap(vision_model)
        embeddings = getattr(model, "embeddings", None)
        encoder = getattr(model, "encoder", None)
        layers = getattr(encoder, "layers", None)
        if embeddings is None or not isinstance(layers, nn.ModuleList) or len(layers) == 0:
            raise UnsupportedEncoder(
                f"{type(vision_model).__name__}: expected a CLIP/SigLIP vision model with `embeddings` and "
                "`encoder.layers` (itself or under `.vision_model`)"
            )
        for i, layer in enumerate(layers):
            _check_layer(layer, i)
        # CLIP prepends a learned class embedding; SigLIP has none. Nothing else tells them apart reliably.
        has_cls = isinstance(getattr(embeddings, "class_embedding", None), torch.Tensor)
        return EncoderLayout(model=model, layers=layers, has_cls=has_cls)

    def layer_index(self, layer: int) -> int:
        """Python-style index into the encoder's layers (-2 = penultimate, LLaVA's feature layer)."""
        n = len(self.layers)
        if not -n <= layer < n:
            raise IndexError(f"layer {layer} out of range for an encoder of {n} layers")
        return layer % n


def _unwrap(module: nn.Module) -> nn.Module:
    # transformers 4.x: CLIPVisionModel.vision_model is the transformer; 5.x: CLIPModel.vision_model is the
    # CLIPVisionModel. Descend while the module itself has no encoder.
    seen = 0
    while getattr(module, "encoder", None) is None and isinstance(getattr(module, "vision_model", None), nn.Module):
        module = module.vision_model
        seen += 1
        if seen > 4:
            break
    return module


_LAYER_PARTS = ("layer_norm1", "self_attn")
_ATTN_PARTS = ("q_proj", "k_proj", "num_heads", "head_dim", "scale")


def _check_layer(layer: nn.Module, i: int) -> None:
    missing = [p for p in _LAYER_PARTS if not hasattr(layer, p)]
    attn = getattr(layer, "self_attn", None)
    missing += [f"self_attn.{p}" for p in _ATTN_PARTS if attn is not None and not hasattr(attn, p)]
    if missing:
        raise UnsupportedEncoder(f"encoder layer {i} ({type(layer).__name__}) has no {', '.join(missing)}")
    if getattr(attn, "is_causal", False):
        raise UnsupportedEncoder(f"encoder layer {i} has causal attention; a vision encoder attends to all tokens")


class _Stop(Exception):
    """Raised from the read layer's forward hook: the layers after it are not needed."""


@dataclass
class LayerReading:
    inputs: torch.Tensor  # [B, N, hidden] what entered the layer (before layer_norm1)
    outputs: torch.Tensor  # [B, N, hidden] what the layer returned (LLaVA's features at this layer)


def read_layer(layout: EncoderLayout, pixel_values: torch.Tensor, index: int) -> LayerReading:
    """Run the encoder's own forward up to and including layer `index`, and return that layer's input and output.

    The layers after `index` are skipped (an exception from the forward hook unwinds the model's forward), so
    reading layer -2 of a 24-layer CLIP costs 23 layers. Hooks are instance-local, removed on return, and only
    react to calls from this thread, so other models and other threads are untouched.
    """
    target = layout.layers[index]
    caller = threading.get_ident()
    got: dict[str, torch.Tensor] = {}

    def before(module, args, kwargs):
        if threading.get_ident() == caller:
            got["inputs"] = args[0] if args else kwargs["hidden_states"]

    def after(module, args, kwargs, output):
        if threading.get_ident() == caller:
            # transformers 5.x layers return the tensor; 4.x returned a tuple with it first.
            got["outputs"] = output[0] if isinstance(output, (tuple, list)) else output
            raise _Stop

    handles = [
        target.register_forward_pre_hook(before, with_kwargs=True),
        target.register_forward_hook(after, with_kwargs=True),
    ]
    try:
        layout.model(pixel_values=pixel_values)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    if set(got) != {"inputs", "outputs"}:
        raise UnsupportedEncoder(f"layer {index} did not run during the encoder's forward")
    return LayerReading(inputs=got["inputs"], outputs=got["outputs"])


@dataclass
class QueriesKeys:
    queries: torch.Tensor  # [B, H, Nq, d] Nq = 1 (the CLS row) or N
    keys: torch.Tensor  # [B, H, N, d] including the projection bias (the reference's merge metric has it)
    scale: float


def project_qk(layout: EncoderLayout, index: int, inputs: torch.Tensor, cls_only: bool) -> QueriesKeys:
    """Recompute the layer's queries and keys from its input exactly as its attention does.

    With `cls_only`, only the CLS query is projected: the dominant score needs no other row.
    """
    layer = layout.layers[index]
    attn = layer.self_attn
    h = layer.layer_norm1(inputs)  # [B, N, hidden]
    b, n, _ = h.shape
    heads, d = int(attn.num_heads), int(attn.head_dim)
    q_in = h[:, :1] if cls_only else h
    queries = attn.q_proj(q_in).view(b, q_in.shape[1], heads, d).transpose(1, 2)  # [B, H, Nq, d]
    keys = attn.k_proj(h).view(b, n, heads, d).transpose(1, 2)  # [B, H, N, d]
    return QueriesKeys(queries=queries, keys=keys, scale=float(attn.scale))
