"""`vidmini cache` and `vidmini cache clear`: the decoded-frame cache."""

from __future__ import annotations

import json
import time
from typing import Optional

import typer

from vidmini import errors
from vidmini.cli.options import JsonOpt

cache_app = typer.Typer(help="The decoded-frame cache: show its entries and sizes, or clear them.",
                        invoke_without_command=True)


@cache_app.callback()
def cache_show(ctx: typer.Context, json_out: bool = JsonOpt) -> None:
    """Show the cache folder, each entry (source video, frames, size, last use) and the total against the cap.

    The cache lives in VIDMINI_CACHE_DIR (default ~/.cache/vidmini/frames) and holds at most VIDMINI_CACHE_MAX_GB
    (default 8) in all; the least recently used entries are evicted to make room.
    """
    if ctx.invoked_subcommand is not None:
        return
    from vidmini.inputs import cache_folder

    root, found = cache_folder.cache_root(), cache_folder.entries()
    total, limit = sum(e["bytes"] for e in found), cache_folder.limit_bytes()
    if json_out:
        print(json.dumps({"root": str(root), "limit_bytes": limit, "total_bytes": total, "entries": found}))
        return
    cap = f"{limit / 1024**3:.1f} GB" if limit is not None else "invalid VIDMINI_CACHE_MAX_GB"
    print(f"{root}: {len(found)} entr{'y' if len(found) == 1 else 'ies'}, {total / 1e6:.1f} MB (cap {cap})")
    for e in reversed(found):  # most recently used first
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["last_used"]))
        print(f"  {e['key']}  {e['bytes'] / 1e6:9.1f} MB  {e['frames'] or '?':>6} frames  {used}  {e['source'] or '(damaged)'}")


@cache_app.command("clear")
def cache_clear(
    older_than: Optional[str] = typer.Option(None, "--older-than", help="Only entries unused for this long: 30d, 12h, 90m, 3600s (a bare number is days)."),
    json_out: bool = JsonOpt,
) -> None:
    """Remove cache entries (all, or those unused for --older-than) and temp folders left by killed runs."""
    from vidmini.inputs import cache_folder

    try:
        age = cache_folder.parse_age(older_than) if older_than is not None else None
    except ValueError:
        raise errors.UsageError(f"--older-than {older_than!r}: give a duration such as 30d, 12h or 90m")
    removed = cache_folder.clear(older_than_s=age)
    freed = sum(e["bytes"] for e in removed)
    if json_out:
        print(json.dumps({"removed": removed, "freed_bytes": freed}))
    else:
        print(f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}, {freed / 1e6:.1f} MB, from {cache_folder.cache_root()}")
