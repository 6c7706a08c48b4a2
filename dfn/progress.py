"""Progress for long waits (test-set generation, video decoding, scene cuts, fetching, comparisons).

Shown on an interactive terminal only, and on the global rank zero only: tests, CI and redirected logs
(stderr not a TTY) stay silent, so their output remains readable. ``DFN_PROGRESS=1`` forces it on,
``DFN_PROGRESS=0`` off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID")  # as Lightning reads them, before a trainer sets it


def global_rank() -> int:
    """This process's global rank: the one Lightning's strategy set (multi-device runs), else the
    launcher's environment, else 0."""
    rank_zero = sys.modules.get("lightning_utilities.core.rank_zero")  # only when Lightning is loaded
    rank = getattr(getattr(rank_zero, "rank_zero_only", None), "rank", None)
    if rank is not None:
        return int(rank)
    return next((int(os.environ[key]) for key in RANK_VARIABLES if os.environ.get(key, "").isdigit()), 0)


def enabled() -> bool:
    """Whether progress is shown: ``DFN_PROGRESS`` if set, else stderr is a terminal, on rank zero."""
    forced = os.environ.get("DFN_PROGRESS", "").strip().lower()
    if forced in ("0", "false", "no", "off") or global_rank() != 0:
        return False
    return forced in ("1", "true", "yes", "on") or sys.stderr.isatty()


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it",
             position: int | None = None) -> Iterator[T]:
    """`items`, with a progress bar named `desc` on stderr when `enabled()`; the items unchanged.
    `position`: the bar's line, for bars running at the same time (0 = the first)."""
    if not enabled():
        yield from items
        return
    yield from tqdm(items, desc=f"dfn: {desc}", total=total, unit=unit, leave=False, file=sys.stderr,
                    dynamic_ncols=True, position=position)
