"""train.prefetch: batches placed ahead of the consumer, in order, each exactly once."""

from train.prefetch import prefetch_to_device


def numbered(n):
    return ((f"pos{i}", {"x": i}) for i in range(n))


def test_order_tags_and_placement_are_kept():
    out = list(prefetch_to_device(numbered(7), lambda b: {"x": b["x"] * 10}, size=2))
    assert out == [(f"pos{i}", {"x": 10 * i}) for i in range(7)]


def test_batches_are_placed_size_ahead_of_the_consumer():
    placed = []

    def put(batch):
        placed.append(batch["x"])
        return batch

    stream = prefetch_to_device(numbered(10), put, size=3)
    for expected in range(10):
        _, batch = next(stream)
        assert batch["x"] == expected
        # Consumed: 0..expected; placed ahead: the next 3 (fewer at the end), none of them twice.
        assert placed == list(range(min(expected + 3, 10)))


def test_size_zero_places_nothing_ahead():
    placed = []
    out = list(prefetch_to_device(numbered(3), lambda b: placed.append(b) or b, size=0))
    assert [b["x"] for _, b in out] == [0, 1, 2] and placed == []
