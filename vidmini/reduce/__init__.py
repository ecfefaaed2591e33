"""Token reduction for vision encoders: fewer vision tokens per frame for the LLM (VisionZip)."""

from vidmini.reduce.encoder import UnsupportedEncoder
from vidmini.reduce.visionzip import Budget, BudgetClamped, plan_budget, reduce_tokens, select_and_merge

__all__ = ["Budget", "BudgetClamped", "UnsupportedEncoder", "plan_budget", "reduce_tokens", "select_and_merge"]
