"""Weight-only int8 for the LLM on a CPU (`--quantize 8bit` there; bitsandbytes' 8-bit needs CUDA).

Decoding one token reads every weight of the LLM once, so on a CPU it runs at the speed memory streams the weights:
int8 weights (one scale per output row) read a quarter of float32's bytes. A product over a few rows (a decode
step) runs torch's int8 weight-only kernel with bfloat16 activations; a product over many rows (prefill, pre-fusion)
is bound by arithmetic instead, so the layer's weights are expanded to the activations' dtype for one ordinary
matrix product: the same int8 weights either way, no second copy kept.

The kernel is torch's internal `aten::_weight_int8pack_mm`, reached through vidmini.infra.internals like every private
name; `check_kernel` proves it present and right on a small product before any model is changed, so a torch release
that drops or changes it fails at load with a one-line message instead of answering wrongly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vidmini.errors import ModelLoadError
from vidmini.infra.internals import InternalsChanged, int8_weight_matmul

FEW_ROWS = 16  # up to this many rows (decode steps, a question's few tokens): the int8 kernel


def _int8_mm(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x [n, in] bfloat16 @ (weight [out, in] int8 * scales [out])^T -> [n, out] bfloat16."""
    return int8_weight_matmul()(x, weight, scales)


def kernel_is_fast() -> bool:
    """Whether torch dispatches this CPU's kernels to AVX2 or AVX512 code, where the int8 kernel was measured faster
    than float32 (bench/decode_ceiling.py); with plain code it is 2x slower (9.1 vs 18.7 tokens/s)."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one float32 scale per output row: (int8 [out, in], scales [out])."""
    w = weight.detach().float()
    scales = w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127.0  # [out]
    return torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8), scales


class Int8Linear(nn.Module):
    """A bias-free nn.Linear whose weight is held as int8 rows and their scales."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if linear.bias is not None:
            raise ModelLoadError("--quantize 8bit on a CPU narrows bias-free layers only (Llama's are), and this model's "
                                 "LLM has biases; use --quantize none")
        weight, scales = quantize_rows(linear.weight)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # parameters (frozen), not buffers: the memory report counts a model's weights by its parameters
        self.weight = nn.Parameter(weight, requires_grad=False)  # [out, in] int8
        self.scales = nn.Parameter(scales, requires_grad=False)  # [out] float32
        self.scales_bf16 = nn.Parameter(scales.to(torch.bfloat16), requires_grad=False)  # the kernel's scale dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)  # [n, in]
        if len(rows) <= FEW_ROWS:
            out = _int8_mm(rows.to(torch.bfloat16), self.weight, self.scales_bf16).to(x.dtype)  # [n, out]
        else:
            out = F.linear(rows, (self.weight.to(x.dtype) * self.scales.to(x.dtype)[:, None]))  # [n, out]
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 rows"


def check_kernel() -> None:
    """The int8 kernel exists and computes x @ (int8 * scale)^T: else a one-line ModelLoadError."""
    gen = torch.Generator().manual_seed(0)
    linear = nn.Linear(64, 48, bias=False)
    nn.init.normal_(linear.weight, generator=gen)
    x = torch.randn(2, 64, generator=gen)
    layer = Int8Linear(linear)
    expected = F.linear(x, layer.weight.float() * layer.scales[:, None])  # [2, 48]
    try:
        got = layer(x)  # 2 rows: the kernel's path
    except (InternalsChanged, AttributeError, RuntimeError, NotImplementedError) as err:
        raise ModelLoadError(f"--quantize 8bit on CPU needs torch's int8 weight-only kernel, which this torch "
                             f"({torch.__version__}) lacks ({type(err).__name__}); use --quantize none")
    if not torch.allclose(got, expected, rtol=0.02, atol=0.05 * float(expected.abs().max())):
        raise ModelLoadError(f"torch {torch.__version__}'s int8 weight-only kernel gives other products than vidmini "
                             "expects; use --quantize none")


def quantize_linears(modules: list[nn.Module]) -> int:
    """Replace every plain nn.Linear below `modules` by an Int8Linear; returns how many. Call check_kernel first."""
    replaced = 0
    for root in modules:
        for parent in root.modules():
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:
                    setattr(parent, name, Int8Linear(child))
                    replaced += 1
    return replaced
