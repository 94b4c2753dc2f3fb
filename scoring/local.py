"""Score on one machine: stream the input a chunk at a time, one Parquet shard per chunk.

Memory stays bounded by a few chunks whatever the input's size: while the engine
samples one chunk, a thread reads the next and another summarises and writes the
previous one (TensorFlow and numpy release the GIL, so the engine's calls overlap
with decoding, summaries and Parquet I/O). A shard already in
the output folder is skipped, so a rerun of an interrupted run resumes where it
stopped. Progress: a tqdm bar when tqdm is installed, else one line per shard.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TextIO

import pyarrow as pa

from scoring.output import shard_path, write_shard, written_shards
from scoring.scorer import Scorer
from scoring.sources import Source


def run_local(scorer: Scorer, source: Source, output: Path, chunk_rows: int, *,
              progress: bool = True, stream: TextIO | None = None) -> dict[str, int]:
    """Score the chunks of ``source`` whose shard ``output`` lacks; returns counts
    (``chunks``, ``skipped``, ``rows_scored``: the rows of the chunks scored now)."""
    total = source.chunk_count(chunk_rows)
    done = written_shards(output) & set(range(total))
    todo = [k for k in range(total) if k not in done]
    bar = _Progress(total, source.rows, len(done), min(source.rows, len(done) * chunk_rows),
                    enabled=progress, stream=stream or sys.stderr)
    rows_scored = 0
    with ThreadPoolExecutor(1, thread_name_prefix="uq-score-write") as writer:
        pending: Future | None = None
        for k, chunk in _read_ahead(source.chunks(chunk_rows, todo)):
            sampled = scorer.sample(chunk, source.kind)
            if pending is not None:
                pending.result()  # at most one chunk waits to be finished and written
            pending = writer.submit(_finish_and_write, scorer, sampled, shard_path(output, k))
            rows_scored += chunk.num_rows
            bar.update(chunk.num_rows)
        if pending is not None:
            pending.result()
    bar.close()
    return {"chunks": total, "skipped": len(done), "rows_scored": rows_scored}


def _finish_and_write(scorer: Scorer, sampled, path: Path) -> None:
    write_shard(scorer.finish(sampled), path)


def _read_ahead(chunks: Iterator[tuple[int, pa.Table]]) -> Iterator[tuple[int, pa.Table]]:
    """``chunks``, the next one read in a thread while the caller works on the last."""
    with ThreadPoolExecutor(1, thread_name_prefix="uq-score-read") as reader:
        upcoming = reader.submit(next, chunks, None)
        while (item := upcoming.result()) is not None:
            upcoming = reader.submit(next, chunks, None)
            yield item


class _Progress:
    """tqdm over rows when it is installed; otherwise one line per shard."""

    def __init__(self, shards: int, rows: int, shards_done: int, rows_done: int, *,
                 enabled: bool, stream: TextIO) -> None:
        self.shards, self.rows, self.stream, self.enabled = shards, rows, stream, enabled
        self.shard, self.row, self.started, self.new_rows = shards_done, rows_done, 0.0, 0
        self.started = time.perf_counter()
        self.bar = None
        if not enabled:
            return
        if shards_done:
            print(f"uq-score: resuming: {shards_done} of {shards} shards already written",
                  file=stream)
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=rows, initial=rows_done, unit="rows", unit_scale=True,
                        desc="uq-score", file=stream)

    def update(self, rows: int) -> None:
        self.shard, self.row, self.new_rows = self.shard + 1, self.row + rows, self.new_rows + rows
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(rows)
            return
        rate = self.new_rows / max(time.perf_counter() - self.started, 1e-9)
        print(f"uq-score: shard {self.shard}/{self.shards}: {self.row:,}/{self.rows:,} rows "
              f"({rate:,.0f} rows/s)", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
