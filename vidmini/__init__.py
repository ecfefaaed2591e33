"""vidmini: ask questions about hours-long videos on one GPU (LLaVA-Mini, one vision token per frame).

`import vidmini` makes the LLaVA-Mini checkpoint loadable through `AutoModelForCausalLM.from_pretrained` with no
trust_remote_code. Registering needs torch and transformers (seconds to import), so it happens as soon as
transformers is imported, not before: `vidmini --help` and `vidmini probe` stay instant.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"


def _register() -> None:
    import vidmini.model  # noqa: F401  (registers with AutoConfig / AutoModelForCausalLM)


class _RegisterAfterTransformers(importlib.abc.MetaPathFinder):
    """Finds `transformers` like the normal finders do, then registers vidmini once its module has run."""

    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run_module = spec.loader.exec_module

        def exec_then_register(module):
            run_module(module)
            _register()

        spec.loader.exec_module = exec_then_register
        return spec


if "transformers" in sys.modules:
    _register()
elif not any(isinstance(f, _RegisterAfterTransformers) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterTransformers())
