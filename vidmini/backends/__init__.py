"""Models other than LLaVA-Mini, as sources of per-frame LLM tokens for the streaming engine."""
