"""vidmini: ask questions about hours-long videos on one GPU (LLaVA-Mini, one vision token per frame).

`import vidmini` makes the LLaVA-Mini checkpoint loadable through `AutoModelForCausalLM.from_pretrained` with no
trust_remote_code. Registering needs torch and transformers (seconds to import), so it happens as soon as
transformers is imported, not before: `vidmini --help` and `vidmini probe` stay instant.
"""

from __future__ import annotations

from vidmini.infra.internals import register_after_import

__version__ = "0.1.0"


def _register() -> None:
    import vidmini.families.llava_mini  # noqa: F401  (registers with AutoConfig / AutoModelForCausalLM)


register_after_import("transformers", _register)
