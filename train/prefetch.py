"""The next batches already on the device while the current step runs.

JAX dispatches a step and returns at once; what the loop does next (fetch the next numpy batch from tf.data,
copy it to the device) then overlaps with the running step only if it is issued before the loop waits on
anything. Keeping `size` batches placed ahead means the step after this one finds its input on the device:
on an accelerator the host-to-device copy runs beside the step instead of between steps.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


def prefetch_to_device(items: Iterator[tuple[T, dict]], put: Callable[[dict], dict],
                       size: int = 2) -> Iterator[tuple[T, dict]]:
    """(tag, batch) pairs of `items` with each batch passed through `put` (e.g. a driver's `put_batch`)
    `size` pairs ahead of the consumer; the tags (data positions) pass unchanged. `size` 0 places nothing
    ahead. Batches come out in order, each exactly once."""
    queue: collections.deque = collections.deque()

    def fill() -> None:
        while len(queue) < size:
            try:
                tag, batch = next(items)
            except StopIteration:
                return
            queue.append((tag, put(batch)))

    if size <= 0:
        yield from items
        return
    fill()
    while queue:
        yield queue.popleft()
        fill()
