"""`--profile-memory`: where every byte goes, and how long a video fits on a 24, 48 or 80 GB card.

Figures come from real allocations: the token buffer's tensor, the KV cache's tensors (measured after the
answer), the weights' parameters, the CUDA allocator's peaks per stage, and sampled RSS. The projection is
labelled as such: it extrapolates the measured per-frame slope.
"""

from __future__ import annotations

import sys

from vidmini.engine import capacity
from vidmini.infra.internals import dump_memory_history, start_memory_history
from vidmini.infra.memory import GIB, MB, Recorder, rss_bytes


def weights_by_component(model) -> dict[str, dict]:
    """Bytes and dtypes per part its family names (FrameModel.weight_parts); the LLM is everything not in a part.
    `model`: a FrameModel, or a loaded model its family adapts (vidmini.families.registry.adapt)."""
    from vidmini.families.registry import adapt

    model = adapt(model, None)
    parts = model.weight_parts()
    out = {}
    for name, module in parts.items():
        out[name] = _module_bytes(module)
    counted = {id(p) for m in parts.values() for p in m.parameters()}
    llm = [p for p in model.parameters() if id(p) not in counted]
    out["llm"] = {"bytes": sum(p.numel() * p.element_size() for p in llm),
                  "dtypes": sorted({str(p.dtype).replace("torch.", "") for p in llm})}
    return out


def _module_bytes(module) -> dict:
    params = list(module.parameters())
    return {"bytes": sum(p.numel() * p.element_size() for p in params),
            "dtypes": sorted({str(p.dtype).replace("torch.", "") for p in params})}


def build_report(engine, encoded, recorder: Recorder) -> dict:
    model = engine.model
    frames = encoded.frames
    buffer = encoded.buffer
    kv_per_token = engine.measured_kv_bytes_per_token or engine.kv_bytes_per_token()
    kv_per_frame = capacity.per_frame(kv_per_token * model.tokens_per_unit, engine.shape)
    slope = buffer.bytes_per_frame + kv_per_frame
    weights = weights_by_component(model)
    weight_bytes = sum(w["bytes"] for w in weights.values())
    stages = {
        name: {"seconds": round(s.seconds, 4), "calls": s.calls, "cpu_rss_peak_bytes": s.cpu_rss_peak,
               "device_allocated_peak_bytes": s.device_allocated_peak if recorder.cuda else None,
               "device_reserved_peak_bytes": s.device_reserved_peak if recorder.cuda else None}
        for name, s in recorder.stages.items()
    }
    peak_device = max((s.device_allocated_peak for s in recorder.stages.values()), default=0) if recorder.cuda else None
    working = engine.batch_size * capacity.working_bytes_per_frame(engine.shape, engine.dtype)
    fixed = (peak_device - slope * frames) if peak_device else weight_bytes + working
    report = {
        "device": str(engine.device),
        "device_figures": "CUDA allocator counters" if recorder.cuda else "none: not a CUDA run (CPU figures only)",
        "stages": stages,
        "peak": {"cpu_rss_bytes": recorder.sampler.peak if recorder.sampler else rss_bytes(),
                 "device_allocated_bytes": peak_device,
                 "device_reserved_bytes": max((s.device_reserved_peak for s in recorder.stages.values()), default=0)
                 if recorder.cuda else None},
        "weights": {**weights, "total_bytes": weight_bytes},
        "token_buffer": {"bytes": buffer.data.numel() * buffer.data.element_size(),
                         "capacity_frames": buffer.frame_capacity,
                         "tokens_per_frame": engine.tokens_per_frame,
                         "frames": frames, "bytes_per_frame": buffer.bytes_per_frame,
                         "dtype": str(buffer.data.dtype).replace("torch.", "")},
        "kv_cache": {"bytes_per_token": kv_per_token, "bytes_per_frame": kv_per_frame,
                     "bytes_for_this_video": kv_per_frame * frames,
                     "measured": engine.measured_kv_bytes_per_token is not None},
        "slope_bytes_per_frame": slope,
        "fixed_bytes": int(fixed),
        "projection": capacity.projection(fixed, slope, engine.shape),
    }
    return report


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    table = Table(title=f"memory by stage ({report['device']}; device: {report['device_figures']})")
    for col in ("stage", "time s", "CPU RSS peak MB", "device alloc peak MB", "device reserved peak MB"):
        table.add_column(col, justify="right" if col != "stage" else "left")
    for name, s in report["stages"].items():
        dev = s["device_allocated_peak_bytes"]
        res = s["device_reserved_peak_bytes"]
        table.add_row(name, f"{s['seconds']:.2f}", f"{s['cpu_rss_peak_bytes'] / MB:.0f}",
                      "-" if dev is None else f"{dev / MB:.0f}", "-" if res is None else f"{res / MB:.0f}")
    console.print(table)
    w = report["weights"]
    console.print("weights: " + ", ".join(f"{k} {v['bytes'] / MB:.1f} MB ({'/'.join(v['dtypes'])})"
                                          for k, v in w.items() if k != "total_bytes")
                  + f"; total {w['total_bytes'] / GIB:.2f} GiB")
    tb, kv = report["token_buffer"], report["kv_cache"]
    console.print(f"token buffer: {tb['bytes'] / MB:.1f} MB for {tb['capacity_frames']} frames "
                  f"({tb['bytes_per_frame']} B/frame, {tb['dtype']}); KV cache: {kv['bytes_per_frame']} B/frame "
                  f"({kv['bytes_for_this_video'] / MB:.1f} MB for {tb['frames']} frames)")
    console.print(f"slope: {report['slope_bytes_per_frame'] / 1e6:.4f} MB per extra frame; "
                  f"peak CPU RSS {report['peak']['cpu_rss_bytes'] / MB:.0f} MB"
                  + (f"; peak device {report['peak']['device_allocated_bytes'] / GIB:.2f} GiB allocated"
                     if report["peak"]["device_allocated_bytes"] else ""))
    proj = report["projection"]
    console.print("PROJECTION (from the measured slope): " + "; ".join(
        f"{gb}: {proj[gb]['frames']} frames = {proj[gb]['hours_at_1fps']} h at 1 fps ({proj[gb]['limited_by']})"
        for gb in proj if gb != "note"))
    sys.stderr.flush()


# ---- plots and snapshots ----------------------------------------------------------------------------------------
class MemoryOutputs:
    """--memory-plot and --memory-snapshot over one job: checked before the model loads (writable, never replacing
    a file that is not ours, matplotlib there), the snapshot's recording started before the load, both written
    after the work. A plot implies --profile-memory (it draws the sampled figures)."""

    def __init__(self, plot, snapshot):
        from vidmini.infra.outputs import check_memory_outputs

        self.plot, self.snapshot = plot, snapshot
        check_memory_outputs(plot, snapshot)
        if plot is not None:
            check_plot_available()

    @property
    def needs_profile(self) -> bool:
        return self.plot is not None

    def start(self, device: str) -> None:
        if self.snapshot is not None:
            start_snapshot(device)

    def finish(self, recorder: Recorder) -> None:
        if self.plot is not None:
            write_plot(recorder, str(self.plot))
        if self.snapshot is not None:
            write_snapshot(str(self.snapshot))


def check_plot_available(option: str = "--memory-plot") -> None:
    import importlib.util

    from vidmini.errors import UsageError

    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError(f"{option} needs matplotlib: pip install 'vidmini[plot]'")


def write_plot(recorder: Recorder, path: str) -> None:
    """Memory over time, the stages shaded."""
    import matplotlib

    from vidmini.infra.outputs import PLOT_SOFTWARE

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = recorder.sampler.samples if recorder.sampler else []
    fig, ax = plt.subplots(figsize=(10, 4))
    if samples:
        t = [s[0] - recorder.t0 for s in samples]
        ax.plot(t, [s[1] / MB for s in samples], label="CPU RSS (MB)", color="tab:blue")
        if recorder.cuda:
            ax.plot(t, [s[2] / MB for s in samples], label="device allocated (MB)", color="tab:red")
    colours: dict[str, tuple] = {}
    palette = plt.get_cmap("tab10").colors
    for name, start, end in recorder.timeline:
        first = name not in colours
        colour = colours.setdefault(name, palette[(len(colours) + 2) % len(palette)])
        ax.axvspan(start, end, color=colour, alpha=0.15, label=name if first else None)
    ax.set_xlabel("seconds")
    ax.set_ylabel("MB")
    ax.set_title("vidmini memory over time")
    if ax.get_legend_handles_labels()[0]:  # no samples and no stage yet: an empty legend only warns
        ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": PLOT_SOFTWARE})  # how a rerun knows the file is ours
    plt.close(fig)


def start_snapshot(device: str) -> None:
    import torch

    from vidmini.errors import UsageError

    if not device.startswith("cuda") or not torch.cuda.is_available():
        raise UsageError("--memory-snapshot records the CUDA allocator: it needs a CUDA device")
    start_memory_history(max_entries=200_000)


def write_snapshot(path: str) -> None:
    """A pickle that https://pytorch.org/memory_viz opens."""
    dump_memory_history(path)


# ---- will it fit, without running --------------------------------------------------------------------------------
def dry_run(model_id: str, video: str, sampling, dtype: str, quantize: str, device: str, batch_size: int | None,
            max_new_tokens: int, questions: list[str], tokens_per_frame: int | None = None,
            prefusion_tokens: int | None = None) -> dict:
    """The plan from the checkpoint's config and the probe alone (no weights are fetched or loaded): frames after
    the same capacity rule `ask` applies, batch, expected peak memory. Any registered family (its Family answers
    from the config)."""
    import torch

    from vidmini.families.checkpoint_files import model_type
    from vidmini.families.registry import family
    from vidmini.families.loading import LoadOptions, locate_checkpoint, pick_device, pick_dtype, resolve_quantize
    from vidmini.inputs.sources import image_size, is_image, plan_video

    path = locate_checkpoint(model_id, weights=False)
    options = resolve_quantize(LoadOptions(model_id, device, dtype, quantize, tokens_per_frame=tokens_per_frame), path)
    quantize = options.quantize
    found = family(model_type(path))
    if is_image(video):
        wanted, duration, display = 1, None, image_size(video)
    else:
        planned = plan_video(video, sampling)
        wanted, duration = len(planned.plan), planned.info.duration_s
        display = planned.info.display_width, planned.info.display_height
    config = found.frame_shape(path, options, prefusion_tokens, display)  # this video's frames: their size and cost
    prompt_tokens = found.prompt_length(path, questions)
    device = pick_device(device)
    dt = pick_dtype(dtype, device)
    weights = weights_by_component(found.meta_model(path))
    weight_bytes = _weight_bytes(weights, quantize, torch.finfo(dt).bits, found.quantized_parts)
    batch = batch_size or capacity.auto_batch_size(config, dt, device)
    limit = capacity.frame_capacity(config, dt, batch, capacity.free_bytes(device), prompt_tokens, max_new_tokens)
    frames = min(wanted, limit.frames)
    peak = capacity.expected_peak(weight_bytes, frames, config, dt, batch, max_new_tokens)
    working = batch * capacity.working_bytes_per_frame(config, dt)
    per_frame = capacity.bytes_per_frame(config, dt)
    return {"model": model_id, "video": video, "duration_s": duration, "frames_planned": wanted, "frames": frames,
            "frames_limited_by": limit.reason if frames < wanted else None, "device": device,
            "dtype": str(dt).replace("torch.", ""), "quantize": quantize, "batch_size": batch,
            "weights_bytes": weight_bytes, "tokens_per_frame": capacity.tokens_per_video_frame(config),
            "per_frame_bytes": per_frame, "working_set_bytes": working,
            "expected_peak_bytes": peak, "fits": capacity.fits_on_cards(peak),
            "longest_video_at_1fps": capacity.projection(weight_bytes + working, per_frame, config)}


def _weight_bytes(weights: dict, quantize: str, bits: int, quantized: tuple[str, ...]) -> int:
    """Bytes of the weights once loaded: the `quantized` parts at the quantized width, the rest at `bits`
    (meta parameters are float32, so a component's byte count / 4 is its parameter count)."""
    quant_bits = {"none": bits, "8bit": 8, "4bit": 4}[quantize]
    return sum(v["bytes"] // 4 * (quant_bits if k in quantized else bits) // 8 for k, v in weights.items())


def print_dry_run(plan: dict) -> None:
    lines = [
        f"video: {plan['video']} ({plan['duration_s'] or 0:.0f} s) -> {plan['frames']} frames"
        + (f" (of {plan['frames_planned']} planned; limited by {plan['frames_limited_by']})"
           if plan["frames_limited_by"] else ""),
        f"model: {plan['model']} on {plan['device']}, {plan['dtype']}, quantize {plan['quantize']}, batch {plan['batch_size']}",
        f"weights {plan['weights_bytes'] / GIB:.2f} GiB + {plan['per_frame_bytes'] / 1e6:.3f} MB/frame "
        f"({plan['tokens_per_frame']} tokens) x "
        f"{plan['frames']} + working set {plan['working_set_bytes'] / GIB:.2f} GiB",
        f"expected peak: {plan['expected_peak_bytes'] / GIB:.2f} GiB (estimate); fits: "
        + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in plan["fits"].items()),
        "PROJECTION, longest video at 1 fps: " + "; ".join(
            f"{k}: {v['hours_at_1fps']} h" + (f" ({v['limited_by']})" if v["limited_by"] != "memory" else "")
            for k, v in plan["longest_video_at_1fps"].items() if k != "note"),
    ]
    print("\n".join(lines))
