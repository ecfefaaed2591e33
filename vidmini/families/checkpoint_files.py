"""Which checkpoint --model names, judged from the file system and its config.json alone: no torch, so that a
file given as a model, or a family vidmini cannot run, is one line at once rather than after seconds of imports
or a load that fails with an error no user could read."""

from __future__ import annotations

import json
import os

from vidmini.errors import ModelLoadError
from vidmini.families.registry import NAMES, model_types, source_for
from vidmini.inputs.paths import check_not_url, special_kind

DEFAULT_MODEL = "ICTNLP/llava-mini-llama-3.1-8b"  # --model's default (the CLI and LoadOptions read it here)


def read_config(path: str) -> dict:
    try:
        with open(os.path.join(path, "config.json")) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{path}/config.json cannot be read: {err}")


def model_type(path: str) -> str:
    """The checkpoint's `model_type` (config.json), which picks the classes that load it; exit 4 for a family
    vidmini cannot run (the LLaVA-Mini classes would fail on it with an error no user could read)."""
    family = str(read_config(path).get("model_type", ""))
    if family not in model_types():
        what = f"is a {family} checkpoint" if family else "has no model_type in its config.json"
        raise ModelLoadError(f"{path} {what}; vidmini runs {', '.join(model_types())} "
                             f"({', '.join(NAMES.get(t, t) for t in model_types())})")
    return family


def check_checkpoint(model_id: str) -> None:
    """What can be refused about --model before anything slow, from the file system and config.json alone (no
    torch): a URL, a file where a folder is meant, a folder of a family vidmini does not run."""
    if source_for(model_id) is not None:  # a registered source (the demo) checks its own
        return
    check_not_url(model_id, "a Hub id or the path of a model folder")
    if os.path.exists(model_id) and not os.path.isdir(model_id):
        kind = special_kind(os.stat(model_id).st_mode) or "a file"
        raise ModelLoadError(f"--model {model_id} is {kind}, not a model folder (give a Hub id or a folder "
                             "holding config.json)")
    if os.path.isdir(model_id) and os.path.isfile(os.path.join(model_id, "config.json")):
        model_type(model_id)
