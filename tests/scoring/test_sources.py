"""Reading uq-score's inputs: npz, image folders and Parquet, a chunk at a time."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from artifacts.inputs import InputSpec, parse_image
from scoring.sources import IMAGE, InputError, decode, open_source
from tests.scoring.conftest import digits_rows, write_images, write_npz

SPEC = InputSpec((8, 8), (0.0, 16.0))


def all_rows(source, chunk_rows):
    tables = [table for _, table in source.chunks(chunk_rows, range(source.chunk_count(
        chunk_rows)))]
    return pa.concat_tables(tables)


def instances(table, kind):
    rows, x, errors = decode(table, kind, SPEC)
    assert not errors and len(rows) == table.num_rows
    return x


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_streams_chunks_of_x_with_its_ids(tmp_path, compressed):
    x = digits_rows(50)
    ids = [f"row-{i}" for i in range(50)]
    source = open_source(write_npz(tmp_path / "in.npz", x, ids, compressed), SPEC)
    assert (source.rows, source.kind, source.chunk_count(16)) == (50, "x", 4)
    chunks = dict(source.chunks(16, [3, 1]))  # any chunks, as a resumed run asks
    assert sorted(chunks) == [1, 3]
    np.testing.assert_array_equal(instances(chunks[1], "x"), x[16:32])
    assert chunks[3].column("id").to_pylist() == ids[48:]
    whole = all_rows(source, 7)
    np.testing.assert_array_equal(instances(whole, "x"), x)


def test_npz_takes_flat_rows_and_numbers_the_rows_without_ids(tmp_path):
    x = digits_rows(5)
    source = open_source(write_npz(tmp_path / "in.npz", x.reshape(5, 64)), SPEC)
    table = all_rows(source, 2)
    assert table.column("id").to_pylist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(instances(table, "x"), x)


def test_image_folder_lists_pngs_and_jpegs_recursively_by_relative_path(tmp_path):
    ids = write_images(tmp_path, digits_rows(4))
    (tmp_path / ".hidden").mkdir()
    write_images(tmp_path / ".hidden", digits_rows(1))
    (tmp_path / "notes.txt").write_text("not an image")
    source = open_source(str(tmp_path), SPEC)
    assert source.kind == IMAGE and source.rows == 4
    table = all_rows(source, 3)
    assert table.column("id").to_pylist() == sorted(ids)
    expected = np.stack([parse_image(str(tmp_path / name), SPEC) for name in sorted(ids)])
    np.testing.assert_array_equal(instances(table, IMAGE), expected)


def test_an_unreadable_image_is_reported_by_position_and_the_rest_decoded(tmp_path):
    write_images(tmp_path, digits_rows(3))
    (tmp_path / "001.png").write_bytes(b"not a png")
    table = all_rows(open_source(str(tmp_path), SPEC), 10)
    rows, x, errors = decode(table, IMAGE, SPEC)
    position = table.column("id").to_pylist().index("001.png")
    assert errors == {position: "not a readable PNG or JPEG image"}
    assert len(rows) == 2 and x.shape == (2, 8, 8)


def test_parquet_dataset_with_nested_lists_reads_in_order_across_files(tmp_path):
    x = digits_rows(30)
    folder = tmp_path / "table"
    folder.mkdir()
    for part, start in enumerate(range(0, 30, 11)):
        rows = slice(start, start + 11)
        pq.write_table(pa.table({"key": np.arange(30)[rows], "pixels": x[rows].tolist(),
                                 "note": ["n"] * len(x[rows])}), folder / f"part-{part}.parquet")
    source = open_source(str(folder), SPEC, id_column="key", column="pixels")
    assert (source.rows, source.kind) == (30, "x")
    chunks = dict(source.chunks(8, [0, 2, 3]))
    np.testing.assert_array_equal(instances(chunks[2], "x"), x[16:24])
    np.testing.assert_array_equal(instances(chunks[3], "x"), x[24:])
    assert chunks[0].column("id").to_pylist() == list(range(8))


def test_parquet_file_with_image_bytes(tmp_path):
    ids = write_images(tmp_path / "images", digits_rows(3))
    data = [(tmp_path / "images" / name).read_bytes() for name in ids]
    pq.write_table(pa.table({"id": ids, "image": data}), tmp_path / "images.parquet")
    source = open_source(str(tmp_path / "images.parquet"), SPEC)
    assert source.kind == IMAGE
    expected = np.stack([parse_image(str(tmp_path / "images" / name), SPEC) for name in ids])
    np.testing.assert_array_equal(instances(all_rows(source, 2), IMAGE), expected)


def test_bad_rows_are_reported_by_position():
    good = np.full(64, 3.0)
    table = pa.table({"id": [0, 1, 2, 3, 4], "x": pa.array([
        good.tolist(), None, good[:10].tolist(), (good * 10).tolist(),
        [float("nan")] + good[1:].tolist()])})
    rows, x, errors = decode(table, "x", SPEC)
    assert rows.tolist() == [0] and x.shape == (1, 8, 8)
    assert errors == {
        1: "no value",
        2: "expected 64 numbers or a 8 x 8 nested list, got 10 numbers",
        3: "values must lie in the model's range [0, 16], got [30, 30]",
        4: "values must be finite numbers, got NaN or Infinity",
    }


def parquet_with(tmp_path, **columns):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table(columns), path)
    return str(path)


@pytest.mark.parametrize("make, message", [
    (lambda p: f"npz:{p}/missing.npz", "does not exist"),
    (lambda p: "npz:", "needs a path"),
    (lambda p: write_npz(p / "a.npz", digits_rows(3).reshape(3, 4, 16)),
     r"x has shape \[3, 4, 16\], but the model takes \[rows, 8, 8\]"),
    (lambda p: write_npz(p / "a.npz", np.zeros((0, 8, 8))), "holds no rows"),
    (lambda p: write_npz(p / "a.npz", digits_rows(3), ids=["a", "b", "a"]),
     "ids must be unique, but 'a' appears more than once"),
    (lambda p: write_npz(p / "a.npz", digits_rows(3), ids=[1, 2]), "ids holds 2 values"),
    (lambda p: (p / "a.npz").write_text("no zip") and f"npz:{p}/a.npz", "cannot read"),
    (lambda p: str(p), "holds no PNG or JPEG images"),
    (lambda p: parquet_with(p, key=[1], x=[[1.0] * 64]), "has no id column 'id'"),
    (lambda p: parquet_with(p, id=[1], a=[[1.0] * 64], b=[[1.0] * 64]),
     "name the input column with --column"),
    (lambda p: parquet_with(p, id=[1], x=[[1.0] * 49]), "holds 49 numbers"),
    (lambda p: parquet_with(p, id=[1], x=["text"]), "must hold image bytes or lists"),
])
def test_inputs_that_cannot_be_scored_raise_one_line(tmp_path, make, message):
    with pytest.raises(InputError, match=message) as raised:
        open_source(make(tmp_path), SPEC)
    assert "\n" not in str(raised.value)
