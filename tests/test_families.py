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


@pytest.mark.parametrize("family", FAMILIES)
def test_adapt_takes_the_load_options(family, checkpoints, tiny_model):
    """A model built elsewhere, adapted with the load options, is the frame model `load` gives: its
    --tokens-per-frame and the checkpoint folder's processor settings; an option not for the family is refused as
    the dry run refuses it."""
    from vidmini.errors import UsageError
    from vidmini.families.hf_video.backend import load_tokenizer, model_class
    from vidmini.families.interface import LoadOptions
    from vidmini.families.loading import load_model
    from vidmini.families.registry import adapt

    folder = checkpoints[family]
    options = LoadOptions(folder, "cpu", "float32", tokens_per_frame=3)
    loaded, _ = load_model(options)
    model = model_class(family).from_pretrained(folder)
    adapted = adapt(model, load_tokenizer(folder, folder), options)
    assert adapted is not model and adapted.tokens_per_unit == loaded.tokens_per_unit == 3
    assert (adapted.geometry, adapted.image_mean, adapted.image_std) == \
        (loaded.geometry, loaded.image_mean, loaded.image_std)
    assert adapt(model, None).tokens_per_unit == loaded.native_tokens_per_unit  # no options: the defaults
    with pytest.raises(UsageError, match=f"has {loaded.native_tokens_per_unit} tokens per frame"):
        adapt(model, None, LoadOptions(folder, tokens_per_frame=10_000))
    with pytest.raises(UsageError, match="--tokens-per-frame is for the other video VLMs"):
        adapt(tiny_model[0], tiny_model[1], LoadOptions(tokens_per_frame=3))
