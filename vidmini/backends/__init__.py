"""Models other than LLaVA-Mini, as sources of per-frame LLM tokens for the streaming engine."""

# The `model_type`s of the video VLMs vidmini.backends.hf_video loads; here so that a checkpoint's family can be
# checked before torch is imported.
FAMILIES = ("llava_next_video", "llava_onevision")
