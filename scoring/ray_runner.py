"""Score on a Ray cluster: Ray Data reads the input, ``map_batches`` runs it through a
pool of actors that each hold an engine, and ``write_parquet`` writes the scores.

The model travels with the job: the driver reads the store entry's ``.keras`` file
(without loading TensorFlow itself) and puts its bytes in the object store; each
actor loads its own copy from there, with the card passed in its constructor.
Nothing but the output folder needs to be shared: the workers write the scores
into it, and the driver then reads five small columns back for ``summary.json``.
Rows carry their own randomness (``scoring.scorer``), so the scores equal the local
runner's bit for bit, in whatever order and blocks Ray produces them. A Ray run does
not resume: an interrupted one is started over.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from artifacts.cards import ModelCard
from scoring.output import PARQUET_OPTIONS, SCORES
from scoring.sources import ColumnMap, InputError, Source

if TYPE_CHECKING:
    import keras


#: What a client lacking the cluster's token is told (Ray's token authentication is on by
#: default where `ray start --head` finds a token, and a client joining an address must
#: bring the token itself).
TOKEN_HINT = ("it requires its token: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN to the "
              "cluster's token (`ray get-auth-token` on its head node prints it)")


class RayRunError(RuntimeError):
    """The Ray job failed; the message is one line."""


def connect(address: str) -> bool:
    """Join the Ray cluster at ``address`` (``auto``: the one this machine runs); returns
    whether this call connected (then :func:`disconnect` later), False when this process
    is already connected. Raises InputError when there is no cluster there."""
    try:
        import ray
    except ImportError:
        raise InputError("--ray-address needs Ray: pip install 'uq-serving[ray]'") from None
    if ray.is_initialized():
        return False
    _check_listening(address)
    # Ray's core logs every refused attempt to the process's stderr: kept aside, and
    # passed on only when joining works
    with tempfile.TemporaryFile("w+") as ray_output:
        try:
            with _stderr_to(ray_output):
                # no runtime_env: the cluster's idle workers can then host the actors
                ray.init(address=address, logging_level=logging.WARNING)
        except Exception as error:  # Ray raises ConnectionError, RuntimeError, ValueError...
            raise InputError(f"cannot join the Ray cluster at {address}: "
                             f"{TOKEN_HINT if _refused_token(error) else _first_line(error)}"
                             ) from None
        ray_output.seek(0)
        sys.stderr.write(ray_output.read())
    return True


@contextlib.contextmanager
def _stderr_to(stream) -> Iterator[None]:
    """File descriptor 2 (where native code writes) goes to ``stream`` inside."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(stream.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _refused_token(error: BaseException) -> bool:
    """Whether the cluster refused to join for want of its token (token authentication,
    on by default for clusters that ``ray start --head`` starts where a token exists)."""
    from ray.exceptions import AuthenticationError

    while error is not None:
        if isinstance(error, AuthenticationError) or "InvalidAuthToken" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _check_listening(address: str) -> None:
    """Raise InputError when nothing accepts connections at ``host:port`` (``ray.init``
    would wait minutes for it); ``auto`` is left to Ray, which fails at once."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if address == "auto" or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as error:
        raise InputError(f"cannot join the Ray cluster at {address}: nothing accepts "
                         f"connections there ({error.strerror or error})") from None


def disconnect() -> None:
    import ray

    ray.shutdown()


def run_ray(model_bytes: bytes, card: ModelCard, tag: str, source: Source, output: Path, *,
            n_samples: int, seed: int, batch_size: int | None, chunk_rows: int,
            actors: int | None = None, cpus_per_actor: int = 1,
            progress: bool = True) -> dict[str, Any]:
    """Score ``source`` into ``output/scores`` on the connected cluster with the model
    whose ``.keras`` file is ``model_bytes``; Ray hands the actors batches of up to
    ``chunk_rows`` rows, which they sample ``batch_size`` rows per engine call (None:
    the engine's default). Returns the runner's facts (actors, CPUs per actor)."""
    import ray
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    context.print_on_execution_start = progress
    if actors is None:
        actors = default_actors(int(ray.cluster_resources().get("CPU", 1)), cpus_per_actor)
    model_ref = ray.put(model_bytes)
    constructor = {
        "model": [model_ref],  # in a list: Ray resolves it in the actor, not before
        "card_json": card.model_dump_json(), "tag": tag, "n_samples": n_samples,
        "seed": seed, "batch_size": batch_size, "columns": source.ray_columns(),
        "threads": cpus_per_actor,
    }
    try:
        dataset = source.ray_dataset(chunk_rows).map_batches(
            RayScorer, fn_constructor_kwargs=constructor, batch_size=chunk_rows,
            batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=cpus_per_actor,
        )
        dataset.write_parquet(str(output / SCORES), min_rows_per_file=chunk_rows,
                              **PARQUET_OPTIONS)
    except InputError:
        raise
    except Exception as error:
        raise RayRunError(f"the Ray job failed: {_first_line(_cause(error))}") from None
    return {"actors": actors, "cpus_per_actor": cpus_per_actor,
            "cluster_cpus": int(ray.cluster_resources().get("CPU", 0))}


def default_actors(cluster_cpus: int, cpus_per_actor: int) -> int:
    """Engine actors for a cluster: all its CPUs but one, which Ray Data's read and write
    tasks need (with every CPU held by an actor, the writes wait for the scoring to end:
    on 2 CPUs one actor finished 200,000 rows in 13 s, two in 21 s)."""
    return max(1, (cluster_cpus - 1) // cpus_per_actor)


class RayScorer:
    """A ``map_batches`` actor: one engine, built from the model bytes and card the
    driver put in the object store. Batches are Arrow tables."""

    def __init__(self, model: list, card_json: str, tag: str, n_samples: int, seed: int,
                 batch_size: int | None, columns: ColumnMap, threads: int) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import ray

        # import TensorFlow: in the Ray worker, not the driver
        from scoring.scorer import Scorer
        from uncertainty.mc import configure_tensorflow_threads

        configure_tensorflow_threads(threads)
        keras_model = _keras_model(ray.get(model[0]))
        card = ModelCard.model_validate_json(card_json)
        self.scorer = Scorer(keras_model, card, tag, n_samples, seed, batch_size)
        self.columns = columns

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.scorer.score(self.columns(batch), self.columns.kind)


def _keras_model(data: bytes) -> keras.Model:
    import keras

    with tempfile.TemporaryDirectory(prefix="uq-score-") as folder:
        path = os.path.join(folder, "model.keras")
        with open(path, "wb") as stream:
            stream.write(data)
        return keras.saving.load_model(path, compile=False)


def _cause(error: BaseException) -> BaseException:
    """The user-code exception inside Ray's wrappers, when there is one."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
