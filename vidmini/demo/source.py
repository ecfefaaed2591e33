"""The demo model as a checkpoint source (vidmini.families.interface.CheckpointSource), registered in
vidmini.families.registry like any other: `--model demo`, or a folder of its layout (train/ exports one: a config
naming `llm_source`, our weights only, no tokenizer), becomes a LLaVA-Mini checkpoint folder (vidmini.demo.checkpoint).
Judged from the file system alone: no torch until a checkpoint is resolved."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

from vidmini.families.interface import CheckpointSource

NAME = "demo"


class DemoSource(CheckpointSource):
    def claims(self, model_id: str) -> bool:
        return model_id == NAME or _demo_layout(model_id)

    def resolve(self, model_id: str) -> str:
        from vidmini.demo.checkpoint import WEIGHTS_DIR, resolve_demo

        return resolve_demo(WEIGHTS_DIR if model_id == NAME else Path(model_id))

    def config_folder(self, model_id: str) -> str:
        """The shipped config (and the LLM's tokenizer is not needed to check options), so that checking an option
        does not prepare the demo's LLM."""
        from vidmini.demo.checkpoint import WEIGHTS_DIR

        return str(WEIGHTS_DIR) if model_id == NAME else model_id


def _demo_layout(path: str) -> bool:
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config) or glob.glob(os.path.join(path, "tokenizer*")):
        return False
    try:
        with open(config) as f:
            return "llm_source" in json.load(f)
    except (OSError, ValueError):
        return False  # not ours to judge: the ordinary checks say what is wrong with it


SOURCE = DemoSource()
