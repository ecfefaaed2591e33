"""Decode -> frames: probing, sampling plans, decoders and streaming (video/), sources of frame batches, the
decoded-frame cache, pixel preprocessing, and the checks on input paths and questions (docs/architecture.md)."""
