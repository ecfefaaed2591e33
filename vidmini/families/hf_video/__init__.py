"""LLaVA-NeXT-Video and LLaVA-OneVision through transformers' own classes, as frame models (backend.py;
docs/families.md)."""
