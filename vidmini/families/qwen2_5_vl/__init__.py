"""Qwen2.5-VL (transformers' `qwen2_5_vl`) as a vidmini frame model: its video preprocessing, its vision tower
unit by unit (2 frames per unit), VisionZip after the patch merger, and M-RoPE positions computed as the units
stream in (docs/qwen2_5_vl.md)."""
