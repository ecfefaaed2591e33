"""The registry and the frame-model interface seen from the outside: every registered family answers the dry
run from its config with the figures a real run measures, and refuses the options that are not for it."""

from __future__ import annotations

import pytest
from conftest import REPO

from vidmini.testing.tiny_video_vlm import FAMILIES, write_checkpoint

SAMPLE = REPO / "sample_videos" / "scenes.mp4"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {family: write_checkpoint(str(root / family), family) for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_dry_run_plans_what_the_run_measures(family, checkpoints, cli):
    """--dry-run on a LLaVA video backend (meta weights, the config's FrameShape): the frames ask then uses, the
    weight bytes --profile-memory counts, and the buffer + KV bytes per frame it measures."""
    args = ["--model", checkpoints[family], "--max-frames", 5, "--tokens-per-frame", 3, "--device", "cpu",
            "--max-new-tokens", 2, "--json", "-q"]
    plan = cli("ask", "--dry-run", SAMPLE, "What?", *args)
    assert plan.code == 0, plan.stderr
    run = cli("ask", SAMPLE, "What?", "--profile-memory", *args)
    assert run.code == 0, run.stderr
    memory = run.json["memory"]
    assert plan.json["frames"] == run.json["frames_used"] == 5
    assert plan.json["weights_bytes"] == memory["weights"]["total_bytes"]
    assert plan.json["per_frame_bytes"] == memory["slope_bytes_per_frame"]


def test_every_registered_type_names_a_family_that_loads(checkpoints):
    """Each registry line imports, and its Family claims the model_type it is registered under."""
    from vidmini.families import registry
    from vidmini.families.interface import Family

    for model_type in registry.model_types():
        family = registry.family(model_type)
        assert isinstance(family, Family) and model_type in family.model_types
        assert model_type in registry.NAMES
