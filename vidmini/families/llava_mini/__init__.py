"""LLaVA-Mini: the model (vidmini.model until the layout moves) and its frame-model adapter (family.py)."""
