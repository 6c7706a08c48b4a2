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


def enabled() -> bool:
    """Whether progress is shown: ``DFN_PROGRESS`` if set, else stderr is a terminal, on rank zero."""
    forced = os.environ.get("DFN_PROGRESS", "").strip().lower()
    if forced in ("0", "false", "no", "off"):
        return False
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)
    if rank != 0:
        return False
    return forced in ("1", "true", "yes", "on") or sys.stderr.isatty()


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """`items`, with a progress bar named `desc` on stderr when `enabled()`; the items unchanged."""
    if not enabled():
        yield from items
        return
    yield from tqdm(items, desc=f"dfn: {desc}", total=total, unit=unit, leave=False, file=sys.stderr,
                    dynamic_ncols=True)
