"""Progress that shows on a terminal and in a redirected log alike."""
from __future__ import annotations

import logging
import time
from typing import Iterable, Iterator, TypeVar

from tqdm import tqdm

__all__ = ["progress"]

log = logging.getLogger(__name__)
T = TypeVar("T")


def progress(items: Iterable[T], desc: str, bar: bool, total: int | None = None,
             every_s: float = 30.0) -> Iterator[T]:
    """``items`` with a tqdm bar (``bar``: on a terminal), or else one log line at
    most every ``every_s`` seconds, so a redirected log shows a long loop moving
    without a line per batch."""
    if bar:
        yield from tqdm(items, desc=desc, leave=False, total=total)
        return
    total = total if total is not None else len(items)  # type: ignore[arg-type]
    start = last = time.perf_counter()
    for done, item in enumerate(items, start=1):
        yield item
        now = time.perf_counter()
        if now - last >= every_s and done < total:
            last = now
            log.info("%s: %d/%d (%.0f s, about %.0f s left)", desc, done, total, now - start,
                     (now - start) * (total - done) / done)
