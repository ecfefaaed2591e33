"""Where `vidmini summarize` runs its workers: in this process, one per device (vidmini.jobs.workers), or on a Ray
cluster (vidmini.jobs.scale.ray). Above all three, so none of them imports another's caller."""

from __future__ import annotations

from dataclasses import dataclass, field

from vidmini.jobs.summarize import SummarizeOptions, run_summarize


@dataclass(frozen=True)
class Placement:
    """Where summarize's workers run: one in this process (the default), one per device (--devices), or on a Ray
    cluster (--ray ADDRESS, --workers N)."""

    devices: list[str] = field(default_factory=list)
    ray_address: str | None = None
    workers: int | None = None


def summarize_job(load, placement: Placement, paths: list[str], out: str, options: SummarizeOptions,
                  progress: bool = True) -> tuple[int, int, int, int]:
    """`vidmini summarize` once its options are checked and the report is locked: the engine's options, and the
    workers where `placement` puts them, each loading `load` (on its own device). Returns (done, skipped, failed,
    failed in an earlier run)."""
    from dataclasses import replace

    from vidmini.engine.engine import EngineOptions, build_engine

    engine_options = EngineOptions(batch_size=options.batch_size, max_new_tokens=options.max_new_tokens,
                                   evidence=bool(options.evidence))  # checked by build_engine
    if placement.ray_address is not None:
        from vidmini.jobs.scale.ray import RaySettings, run_on_ray

        return run_on_ray(RaySettings(placement.ray_address, placement.workers), load, engine_options,
                          options.profile_memory, paths, out, options, progress)
    if placement.devices:
        from vidmini.jobs.workers import run_on_devices

        loads = [replace(load, device=d) for d in placement.devices]
        return run_on_devices(loads, engine_options, options.profile_memory, paths, out, options, progress)
    return run_summarize(lambda: build_engine(load, engine_options, options.profile_memory, options.questions,
                                              options.max_question_tokens), paths, out, options, progress=progress)
