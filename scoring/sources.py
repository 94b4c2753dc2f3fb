"""What ``uq-score`` reads: ``npz:PATH``, a folder of PNG/JPEG images, or a Parquet file
or dataset; and how a chunk of it becomes model inputs.

Every source yields chunks as Arrow tables of one schema, an ``id`` column and one
value column: ``x`` (an instance's numbers, flat or nested lists) or ``image``
(encoded PNG/JPEG bytes). Chunk ``k`` of ``chunk_rows`` holds the input's rows
``[k * chunk_rows, (k + 1) * chunk_rows)`` in the source's order, so that a resumed
run reads the same rows into the same shard. :func:`decode` turns a chunk into
float32 instances ``[rows, *input_shape]`` as the model card describes (images
converted as the service's ``/predict_image`` converts them), and the rows it
cannot use, each with a message; the local runner and the Ray actors both call it.

Ids: the npz array ``ids`` (integers or strings, default the row number), a
Parquet id column, or for images the path relative to the folder. They must be
unique: a row's randomness comes from its id (``scoring.scorer``).

Ray: Parquet and image folders are read by Ray Data's readers on the cluster
(their path, or a URI such as ``s3://``, must be readable there); an npz file is
read by the driver, a chunk at a time, into the object store.

Whole-input problems raise :class:`InputError` (one line: ``uq-score`` exits 2);
per-row problems are returned by :func:`decode` and reported by id.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import io
import math
import os
import zipfile
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from artifacts.inputs import InputSpec, parse_image

if TYPE_CHECKING:
    import pyarrow.dataset
    import ray.data

#: Image files a folder source reads (case-insensitive); other files are left alone.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY, IMAGE = "x", "image"


class InputError(ValueError):
    """An input that cannot be scored at all; the message is one line."""


def check_exists(text: str) -> None:
    """Raise InputError, before any model loads, unless ``text`` names something that exists
    (local paths only: a URI is checked when it is opened)."""
    path = text.removeprefix("npz:")
    if text.startswith("npz:") and not path:
        raise InputError("npz: needs a path, as in npz:data/backlog.npz")
    if "://" not in path and not os.path.exists(path):
        raise InputError(f"input {path} does not exist")


def open_source(text: str, spec: InputSpec, id_column: str = "id",
                column: str | None = None) -> Source:
    """The source ``text`` names: ``npz:PATH``, a folder of images, a Parquet file or a
    folder of Parquet files (a URI such as ``s3://bucket/dir`` for either of the last)."""
    check_exists(text)
    if text.startswith("npz:"):
        return NpzSource(text.removeprefix("npz:"), spec)
    filesystem, root = _filesystem(text)
    info = filesystem.get_file_info(root)
    if info.type == _file_type().NotFound:
        raise InputError(f"input {text} does not exist")
    if info.type == _file_type().File:
        if not root.lower().endswith(".parquet"):
            raise InputError(
                f"input {text} is a file: expected npz:PATH, a .parquet file or a folder"
            )
        return ParquetSource(text, spec, id_column, column)
    files = _listing(filesystem, root)
    parquet = [f for f in files if f.path.lower().endswith(".parquet")]
    images = [f for f in files if f.path.lower().endswith(IMAGE_SUFFIXES)]
    if parquet and images:
        raise InputError(
            f"folder {text} holds both Parquet files and images: point --input at one kind"
        )
    if parquet:
        return ParquetSource(text, spec, id_column, column)
    if not images:
        raise InputError(
            f"folder {text} holds no PNG or JPEG images ({', '.join(IMAGE_SUFFIXES)}) and no "
            "Parquet files"
        )
    return ImageFolderSource(text, spec, filesystem, root, images)


class Source(abc.ABC):
    """Rows to score, read a chunk at a time."""

    #: the input as given; kind: ARRAY or IMAGE; rows: how many
    text: str
    kind: str
    rows: int

    def chunk_count(self, chunk_rows: int) -> int:
        return math.ceil(self.rows / chunk_rows)

    @abc.abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """What identifies this input's content for a resumed run (sizes, times, names)."""

    @abc.abstractmethod
    def chunks(self, chunk_rows: int, indices: Iterable[int]) -> Iterator[tuple[int, pa.Table]]:
        """``(k, table)`` for each chunk ``k`` of ``indices`` (ascending): ``id`` and the
        value column, rows ``[k * chunk_rows, (k + 1) * chunk_rows)``."""

    @abc.abstractmethod
    def ray_dataset(self, chunk_rows: int) -> ray.data.Dataset:
        """The rows as a Ray dataset; :meth:`ray_columns` maps its batches to a chunk's
        schema."""

    def ray_columns(self) -> ColumnMap:
        return ColumnMap(id_column="id", value_column=self.kind)


@dataclasses.dataclass(frozen=True)
class ColumnMap:
    """Renames a Ray batch's columns to a chunk's (``id`` and ``x`` or ``image``);
    ``path_prefix``: ids are paths with this prefix removed."""

    id_column: str
    value_column: str
    kind: str = ARRAY
    path_prefix: str | None = None

    def __call__(self, table: pa.Table) -> pa.Table:
        ids = table.column(self.id_column)
        if self.path_prefix is not None:
            ids = pc.utf8_slice_codeunits(ids, len(self.path_prefix))
        return pa.table({"id": ids, self.kind: table.column(self.value_column)})


class NpzSource(Source):
    """``npz:PATH``: array ``x`` ``[rows, *input_shape]`` (or flat ``[rows, size]``) and
    optional ``ids``. ``x`` streams from the archive a chunk at a time (compressed or
    not); only a Fortran-ordered ``x`` is read whole."""

    kind = ARRAY

    def __init__(self, path: str, spec: InputSpec) -> None:
        self.text, self.path, self.spec = f"npz:{path}", path, spec
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                if "x.npy" not in names:
                    found = ", ".join(n.removesuffix(".npy") for n in names) or "nothing"
                    raise InputError(f"{path} has no array x (it holds {found})")
                with archive.open("x.npy") as stream:
                    version = np.lib.format.read_magic(stream)
                    header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                              else np.lib.format.read_array_header_2_0)
                    shape, self._fortran_order, self.dtype = header(stream)
                    self._data_offset = stream.tell()
                ids = self._read_ids(archive, names)
        except (zipfile.BadZipFile, OSError, ValueError) as error:
            if isinstance(error, InputError):
                raise
            raise InputError(f"cannot read {path} as an npz archive: {error}") from None
        if self.dtype.kind not in "biuf":
            raise InputError(f"{path}: x must hold numbers, got dtype {self.dtype}")
        self.rows = int(shape[0]) if shape else 0
        row_shape = tuple(int(size) for size in shape[1:])
        if row_shape != spec.input_shape and row_shape != (spec.size,):
            raise InputError(
                f"{path}: x has shape {list(shape)}, but the model takes "
                f"[rows, {', '.join(map(str, spec.input_shape))}] (or [rows, {spec.size}] flat)"
            )
        if self.rows == 0:
            raise InputError(f"{path}: x holds no rows")
        self.ids = np.arange(self.rows, dtype=np.int64) if ids is None else ids
        if len(self.ids) != self.rows:
            raise InputError(f"{path}: ids holds {len(self.ids)} values for {self.rows} rows of x")
        check_unique(pa.array(self.ids), path)

    @staticmethod
    def _read_ids(archive: zipfile.ZipFile, names: list[str]) -> np.ndarray | None:
        if "ids.npy" not in names:
            return None
        with archive.open("ids.npy") as stream:
            ids = np.lib.format.read_array(stream, allow_pickle=False)
        if ids.ndim != 1 or ids.dtype.kind not in "iuU":
            raise InputError(f"ids must be a 1-D array of integers or strings, got {ids.dtype} "
                             f"of shape {list(ids.shape)}")
        return ids.astype(np.int64) if ids.dtype.kind in "iu" else ids

    def fingerprint(self) -> dict[str, Any]:
        status = os.stat(self.path)
        return {"path": os.path.abspath(self.path), "bytes": status.st_size,
                "modified_ns": status.st_mtime_ns}

    def chunks(self, chunk_rows: int, indices: Iterable[int]) -> Iterator[tuple[int, pa.Table]]:
        row_bytes = self.spec.size * self.dtype.itemsize
        with zipfile.ZipFile(self.path) as archive, archive.open("x.npy") as stream:
            whole = (np.lib.format.read_array(stream, allow_pickle=False)
                     if self._fortran_order else None)
            for k in indices:
                start, stop = k * chunk_rows, min((k + 1) * chunk_rows, self.rows)
                if whole is not None:
                    values = whole[start:stop]
                else:
                    stream.seek(self._data_offset + start * row_bytes)  # forward: reads on
                    data = stream.read((stop - start) * row_bytes)
                    values = np.frombuffer(data, dtype=self.dtype)
                flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
                yield k, pa.table({
                    "id": pa.array(self.ids[start:stop]),
                    ARRAY: pa.FixedSizeListArray.from_arrays(flat, self.spec.size),
                })

    def ray_dataset(self, chunk_rows: int) -> ray.data.Dataset:
        import ray

        refs = [ray.put(table) for _, table in self.chunks(chunk_rows, range(
            self.chunk_count(chunk_rows)))]
        return ray.data.from_arrow_refs(refs)


class ImageFolderSource(Source):
    """A folder of PNG/JPEG files, recursively, in the order of their relative paths
    (the ids). Files or folders whose name starts with a dot are left out."""

    kind = IMAGE

    def __init__(self, text: str, spec: InputSpec, filesystem, root: str, files: list) -> None:
        self.text, self.spec, self.filesystem, self.root = text, spec, filesystem, root
        self.files = sorted(files, key=lambda info: info.path)
        self.ids = [_relative(info.path, root) for info in self.files]
        self.rows = len(self.files)

    def fingerprint(self) -> dict[str, Any]:
        digest = hashlib.blake2b(digest_size=16)
        for file_id, info in zip(self.ids, self.files, strict=True):
            digest.update(f"{file_id}\0{info.size}\0{info.mtime_ns}\n".encode())
        return {"folder": self.text if "://" in self.text else os.path.abspath(self.text),
                "files": self.rows, "listing": digest.hexdigest()}

    def chunks(self, chunk_rows: int, indices: Iterable[int]) -> Iterator[tuple[int, pa.Table]]:
        for k in indices:
            rows = range(k * chunk_rows, min((k + 1) * chunk_rows, self.rows))
            images = []
            for row in rows:
                try:
                    with self.filesystem.open_input_file(self.files[row].path) as stream:
                        images.append(stream.read())
                except OSError:
                    images.append(None)  # decode reports it by id
            yield k, pa.table({"id": pa.array(self.ids[rows.start:rows.stop], pa.string()),
                               IMAGE: pa.array(images, pa.binary())})

    def ray_dataset(self, chunk_rows: int) -> ray.data.Dataset:
        import ray.data

        paths = [self._ray_path(info.path) for info in self.files]
        return ray.data.read_binary_files(paths, include_paths=True)

    def ray_columns(self) -> ColumnMap:
        return ColumnMap(id_column="path", value_column="bytes", kind=IMAGE,
                         path_prefix=self._ray_path(self.root).rstrip("/") + "/")

    def _ray_path(self, path: str) -> str:
        if "://" in self.text:  # a URI: keep its scheme for Ray's readers
            return self.text.split("://", 1)[0] + "://" + path
        return path


class ParquetSource(Source):
    """A Parquet file or a folder of Parquet files (pyarrow's dataset order), with an id
    column and a value column: encoded image bytes (binary) or numbers (lists, nested
    or flat, with ``size`` numbers per row)."""

    def __init__(self, text: str, spec: InputSpec, id_column: str, column: str | None) -> None:
        import pyarrow.dataset as pads

        self.text, self.spec = text, spec
        filesystem, root = _filesystem(text)
        try:
            self.dataset = pads.dataset(root, filesystem=filesystem, format="parquet")
            schema = self.dataset.schema
        except (pa.ArrowInvalid, OSError) as error:
            raise InputError(f"cannot read {text} as Parquet: {_first_line(error)}") from None
        names = schema.names
        if id_column not in names:
            raise InputError(f"{text} has no id column {id_column!r} (columns: "
                             f"{', '.join(names)}); name it with --id-column")
        if column is None:
            others = [name for name in names if name != id_column]
            preferred = [name for name in (IMAGE, ARRAY) if name in others]
            if len(others) != 1 and not preferred:
                raise InputError(f"{text} has columns {', '.join(others)} besides "
                                 f"{id_column!r}: name the input column with --column")
            column = (preferred or others)[0]
        elif column not in names:
            raise InputError(f"{text} has no column {column!r} (columns: {', '.join(names)})")
        self.id_column, self.column = id_column, column
        id_type, value_type = schema.field(id_column).type, schema.field(column).type
        if not (pa.types.is_integer(id_type) or pa.types.is_string(id_type)
                or pa.types.is_large_string(id_type)):
            raise InputError(f"{text}: id column {id_column!r} must hold integers or strings, "
                             f"got {id_type}")
        if _is_binary(value_type):
            self.kind = IMAGE
        elif _numbers_per_row(value_type) is not None:
            self.kind = ARRAY
            fixed = _numbers_per_row(value_type)
            if fixed and fixed != spec.size:
                raise InputError(
                    f"{text}: column {column!r} holds {fixed} numbers per row, but the model "
                    f"takes {spec.describe()}"
                )
        else:
            raise InputError(f"{text}: column {column!r} must hold image bytes or lists of "
                             f"numbers, got {value_type}")
        ids = self.dataset.to_table(columns=[id_column]).column(id_column)
        self.rows = len(ids)
        if self.rows == 0:
            raise InputError(f"{text} holds no rows")
        check_unique(ids, text)
        if self.kind == ARRAY:
            self._check_first_row()

    def _check_first_row(self) -> None:
        first = self.dataset.head(1, columns=[self.column]).column(self.column).combine_chunks()
        if isinstance(first.type, pa.ExtensionType):
            first = first.storage
        size = int(_leaves(first)[0][0]) if first.is_valid()[0].as_py() else 0
        if size != self.spec.size:
            raise InputError(f"{self.text}: the first row of {self.column!r} holds {size} "
                             f"numbers, but the model takes {self.spec.describe()}")

    def fingerprint(self) -> dict[str, Any]:
        filesystem, _ = _filesystem(self.text)
        files = []
        for path in self.dataset.files:
            info = filesystem.get_file_info(path)
            files.append([path, info.size, info.mtime_ns])
        return {"parquet": files}

    def chunks(self, chunk_rows: int, indices: Iterable[int]) -> Iterator[tuple[int, pa.Table]]:
        wanted = set(indices)
        if not wanted:
            return
        k, pending, filled = 0, [], 0  # the chunk being read, its batches, its rows so far
        for batch in self.dataset.to_batches(columns=[self.id_column, self.column],
                                             batch_size=min(chunk_rows, 65536)):
            while batch.num_rows:
                take = min(batch.num_rows, chunk_rows - filled)
                if k in wanted:
                    pending.append(batch.slice(0, take))
                filled, batch = filled + take, batch.slice(take)
                if filled == chunk_rows:
                    if k in wanted:
                        yield k, self._renamed(pa.Table.from_batches(pending))
                    if k == max(wanted):
                        return
                    k, pending, filled = k + 1, [], 0
        if pending:
            yield k, self._renamed(pa.Table.from_batches(pending))

    def _renamed(self, table: pa.Table) -> pa.Table:
        return pa.table({"id": table.column(self.id_column),
                         self.kind: table.column(self.column)})

    def ray_dataset(self, chunk_rows: int) -> ray.data.Dataset:
        import ray.data

        return ray.data.read_parquet(self.text, columns=[self.id_column, self.column])

    def ray_columns(self) -> ColumnMap:
        return ColumnMap(id_column=self.id_column, value_column=self.column, kind=self.kind)


def check_unique(ids: pa.Array | pa.ChunkedArray, where: str) -> None:
    """Raise InputError naming a repeated id: a row's randomness and its output row are
    keyed by its id."""
    if pc.count_distinct(ids, mode="all").as_py() == len(ids):
        return
    counts = pc.value_counts(ids)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
    raise InputError(f"{where}: ids must be unique, but {repeated!r} appears more than once")


def decode(table: pa.Table, kind: str, spec: InputSpec) -> tuple[np.ndarray, np.ndarray, dict]:
    """A chunk's instances: ``(rows, x, errors)``: ``rows`` ``[k]`` the positions of the
    usable rows, ``x`` float32 ``[k, *input_shape]``, ``errors`` position -> message for
    the others (an unreadable image, the wrong number of values, values outside the
    card's range or not finite)."""
    if kind == IMAGE:
        return _decode_images(table.column(IMAGE), spec)
    return _decode_arrays(table.column(ARRAY), spec)


def _decode_images(column: pa.ChunkedArray, spec: InputSpec):
    rows, instances, errors = [], [], {}
    for position, data in enumerate(column.to_pylist()):
        if data is None:
            errors[position] = "the file could not be read"
            continue
        try:
            instances.append(parse_image(io.BytesIO(data), spec))
            rows.append(position)
        except ValueError as error:
            errors[position] = str(error)
    x = (np.stack(instances) if instances
         else np.zeros((0, *spec.input_shape), np.float32))
    return np.asarray(rows, dtype=np.int64), x, errors


def _decode_arrays(column: pa.ChunkedArray | pa.Array, spec: InputSpec):
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if isinstance(array.type, pa.ExtensionType):  # e.g. Ray's tensor type
        array = array.storage
    n = len(array)
    valid = np.asarray(array.is_valid(), dtype=bool)
    lengths, leaves = _leaves(array)
    values = np.asarray(leaves.to_numpy(zero_copy_only=False), dtype=np.float32)
    good = valid & (lengths == spec.size)
    errors = {
        position: "no value" if not valid[position]
        else f"expected {spec.describe()}, got {int(lengths[position])} numbers"
        for position in np.flatnonzero(~good).tolist()
    }
    rows = np.flatnonzero(good)
    if len(rows) == n:
        x = values.reshape(n, spec.size)
    else:
        starts = np.cumsum(lengths) - lengths
        x = values[starts[rows, None] + np.arange(spec.size)]
    low, high = spec.value_range
    # NaN propagates through min and max and fails both comparisons; infinities fail one
    bad = ~(x.min(axis=1, initial=np.inf) >= low) | ~(x.max(axis=1, initial=-np.inf) <= high)
    if bad.any():
        for position, row in zip(rows[bad].tolist(), x[bad], strict=True):
            errors[position] = (
                "values must be finite numbers, got NaN or Infinity"
                if not np.isfinite(row).all()
                else f"values must lie in the model's range [{low:g}, {high:g}], got "
                     f"[{row.min():g}, {row.max():g}]"
            )
        rows, x = rows[~bad], x[~bad]
    return rows, np.ascontiguousarray(x).reshape(len(rows), *spec.input_shape), errors


def _leaves(array: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """The numbers of a (nested) list array: how many each row holds ``[rows]`` (0 for a
    null row) and all of them, row after row."""
    rows = len(array)
    size = _numbers_per_row(array.type)
    if size and array.null_count == 0:  # fixed-size lists all the way down: no counting
        while _is_list(array.type):
            array = array.flatten()
        return np.full(rows, size, np.int64), array
    owners = np.arange(rows)
    while _is_list(array.type):
        counts = np.asarray(pc.fill_null(pc.list_value_length(array), 0), dtype=np.int64)
        owners = np.repeat(owners, counts)
        array = array.flatten()
    return np.bincount(owners, minlength=rows), array


def _is_list(data_type: pa.DataType) -> bool:
    return (pa.types.is_list(data_type) or pa.types.is_large_list(data_type)
            or pa.types.is_fixed_size_list(data_type))


def _is_binary(data_type: pa.DataType) -> bool:
    return pa.types.is_binary(data_type) or pa.types.is_large_binary(data_type)


def _numbers_per_row(data_type: pa.DataType) -> int | None:
    """None unless a (nested) list of numbers; then its fixed size, or 0 if it varies."""
    if isinstance(data_type, pa.ExtensionType):
        data_type = data_type.storage_type
    if not _is_list(data_type):
        return None
    size = 1
    while _is_list(data_type):
        size = size * data_type.list_size if (
            pa.types.is_fixed_size_list(data_type) and size) else 0
        data_type = data_type.value_type
    if not (pa.types.is_integer(data_type) or pa.types.is_floating(data_type)):
        return None
    return size


def _filesystem(text: str):
    """(pyarrow filesystem, path in it) of a local path or a URI."""
    import pyarrow.fs as pafs

    if "://" in text:
        try:
            return pafs.FileSystem.from_uri(text)
        except (pa.ArrowInvalid, OSError) as error:
            raise InputError(f"cannot open {text}: {_first_line(error)}") from None
    return pafs.LocalFileSystem(), os.path.abspath(text)


def _file_type():
    import pyarrow.fs as pafs

    return pafs.FileType


def _listing(filesystem, root: str) -> list:
    """Files under ``root``, recursively, leaving out any whose relative path has a part
    starting with a dot."""
    import pyarrow.fs as pafs

    infos = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
    return [info for info in infos if info.type == pafs.FileType.File
            and not any(part.startswith(".") for part in _relative(info.path, root).split("/"))]


def _relative(path: str, root: str) -> str:
    return path[len(root.rstrip("/")) + 1:]


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
