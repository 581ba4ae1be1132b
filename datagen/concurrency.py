"""Bounded concurrency for teacher/judge requests: a window of at most N outstanding calls.

`ThreadPoolExecutor.map` would submit every item at once (and return results in submission order);
teachers are rate-limited remote calls, so only `concurrency` are in flight and results are handed back
as they finish, with a progress bar. On any error the not-yet-started calls are cancelled.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

Item = TypeVar("Item", bound=tuple)


def bounded_map(
    function: Callable[..., Any],
    items: Iterable[Item],
    concurrency: int,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "req",
    progress: bool = True,
) -> Iterator[tuple[Item, Future]]:
    """Call `function(*item)` for each item, at most `concurrency` at a time; yield `(item, future)` as each finishes."""
    from tqdm.auto import tqdm

    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    pending = iter(items)
    in_flight: dict[Future, Item] = {}
    bar = tqdm(total=total, unit=unit, desc=desc, disable=not progress, file=sys.stderr)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        try:
            while True:
                while len(in_flight) < concurrency and (item := next(pending, None)) is not None:
                    in_flight[pool.submit(function, *item)] = item
                if not in_flight:
                    break
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield in_flight.pop(future), future
                    bar.update(1)
        except BaseException:  # GeneratorExit included: the consumer stopped early or raised
            for future in in_flight:
                future.cancel()
            raise
        finally:
            bar.close()
