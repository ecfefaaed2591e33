"""`--profile-memory`: where every byte goes, and how long a video fits on a 24, 48 or 80 GB card.

Figures come from real allocations: the token buffer's tensor, the KV cache's tensors (measured after the
answer), the weights' parameters, the CUDA allocator's peaks per stage, and sampled RSS. The projection is
labelled as such: it extrapolates the measured per-frame slope.
"""

from __future__ import annotations

import sys

from vidmini.memory import GIB, MB, Recorder, rss_bytes

CARDS_GB = (24, 48, 80)


def weights_by_component(model) -> dict[str, dict]:
    parts = {
        "vision_tower": model.model.vision_tower,
        "compressor": model.model.compressor,
        "projector": model.model.mm_projector,
        "prefusion": model.model.prefusion_layers,
    }
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
    kv_per_frame = kv_per_token * model.tokens_per_frame
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
    fixed = (peak_device - slope * frames) if peak_device else weight_bytes + engine.batch_size * engine.working_bytes_per_frame()
    report = {
        "device": str(engine.device),
        "device_figures": "CUDA allocator counters" if recorder.cuda else "none: not a CUDA run (CPU figures only)",
        "stages": stages,
        "peak": {"cpu_rss_bytes": recorder.sampler.peak if recorder.sampler else rss_bytes(),
                 "device_allocated_bytes": peak_device,
                 "device_reserved_bytes": max((s.device_reserved_peak for s in recorder.stages.values()), default=0)
                 if recorder.cuda else None},
        "weights": {**weights, "total_bytes": weight_bytes},
        "token_buffer": {"bytes": buffer.data.numel() * buffer.data.element_size(), "capacity_frames": buffer.capacity,
                         "frames": frames, "bytes_per_frame": buffer.bytes_per_frame,
                         "dtype": str(buffer.data.dtype).replace("torch.", "")},
        "kv_cache": {"bytes_per_token": kv_per_token, "bytes_per_frame": kv_per_frame,
                     "bytes_for_this_video": kv_per_frame * frames,
                     "measured": engine.measured_kv_bytes_per_token is not None},
        "slope_bytes_per_frame": slope,
        "fixed_bytes": int(fixed),
        "projection": projection(fixed, slope, engine),
    }
    return report


def projection(fixed: float, slope: float, engine) -> dict:
    """PROJECTION (not measured): the longest video at 1 fps whose frames fit next to the fixed memory."""
    context = engine.model.config.max_position_embeddings // engine.model.tokens_per_frame
    out = {"note": "projection from the measured per-frame slope; frames also capped by the LLM context"}
    for gb in CARDS_GB:
        frames = max(0, int((gb * 1e9 - fixed) // slope)) if slope else 0
        frames = min(frames, context)
        out[f"{gb}GB"] = {"frames": frames, "hours_at_1fps": round(frames / 3600, 2),
                          "limited_by": "context" if frames == context else "memory"}
    return out


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
