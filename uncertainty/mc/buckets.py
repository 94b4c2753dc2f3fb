"""How the expanded rows (input rows x samples) of a request become compiled calls:
row buckets, chunks of at most a call's rows, padding, and each chunk's keys.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Expanded rows ``[start, stop)`` of one call; they belong to input rows
    ``[first_input, last_input]``."""

    start: int
    stop: int
    first_input: int
    last_input: int


def bucket(rows: int) -> int:
    """The padded row count of a call: a power of two up to 8, then 4, 5, 6 or 7 times
    a power of two, so that padding adds at most a quarter. Each bucket is one XLA
    program, compiled on first use."""
    if rows <= 8:
        return 1 << max(0, rows - 1).bit_length()
    step = 1 << ((rows - 1).bit_length() - 3)
    return -(-rows // step) * step


def largest_bucket_at_most(rows: int) -> int:
    """The largest bucket size (``bucket``) not above ``rows``: calls of at most that
    many rows stay within ``rows`` once padded."""
    if rows <= 8:
        return 1 << (rows.bit_length() - 1)
    step = 1 << ((rows - 1).bit_length() - 3)
    return rows // step * step


def filled(array: np.ndarray, rows: int) -> np.ndarray:
    """``array`` ``[n, ...]`` to ``[rows, ...]`` (n <= rows), repeating its last row."""
    if len(array) == rows:
        return array
    return np.concatenate([array, np.repeat(array[-1:], rows - len(array), axis=0)])


def padded(indices: np.ndarray) -> np.ndarray:
    """int32 ``indices`` ``[n]`` to their bucket ``[bucket(n)]``, repeating the last."""
    return filled(np.asarray(indices, dtype=np.int32), bucket(len(indices)))


def plan_chunks(owners: np.ndarray, max_rows: int) -> list[Chunk]:
    """Split expanded rows (``owners[i]`` is the input row of row ``i``) into calls of
    at most ``max_rows``, a bucket size. Padding the last call to its bucket costs
    less than a further call would."""
    chunks = []
    for start in range(0, len(owners), max_rows):
        stop = min(start + max_rows, len(owners))
        chunks.append(Chunk(start, stop, int(owners[start]), int(owners[stop - 1])))
    return chunks


def sample_numbers(counts: np.ndarray) -> np.ndarray:
    """int32 ``[sum(counts)]``: ``0 .. counts[i] - 1`` for each input ``i`` in turn."""
    starts = np.cumsum(counts) - counts
    return (np.arange(counts.sum()) - np.repeat(starts, counts)).astype(np.int32)


def chunk_keys(seed: int | None, n_chunks: int, shared_by_inputs: np.ndarray) -> np.ndarray:
    """uint64 keys ``[n_chunks, len(shared_by_inputs)]``, one column per dropout step: a
    pure function of ``seed``, fresh when None. A step whose mask is shared by the
    inputs of a sample keeps its first chunk's key in every chunk, so that a sample
    split across chunks still has one mask."""
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0
    ):
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    generator = np.random.default_rng(seed)
    keys = generator.integers(0, 2**64, size=(n_chunks, len(shared_by_inputs)), dtype=np.uint64)
    keys[:, shared_by_inputs] = keys[0, shared_by_inputs]
    return keys
