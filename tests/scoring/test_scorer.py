"""The scorer: one chunk -> one row per input, each row's randomness from (seed, id)."""

import numpy as np
import pyarrow as pa
import pytest

from scoring.scorer import Scorer, output_schema, row_seeds
from tests.scoring.conftest import digits_rows
from uncertainty.calibration import decide
from uncertainty.summary import summarize


def chunk(x: np.ndarray, ids) -> pa.Table:
    return pa.table({"id": ids, "x": pa.FixedSizeListArray.from_arrays(
        x.reshape(-1).astype(np.float32), int(np.prod(x.shape[1:])))})


@pytest.fixture(scope="module")
def scorer(stored):
    model, card, tag = stored
    return Scorer(model, card, tag, n_samples=8, seed=5)


def test_row_seeds_hash_the_seed_and_the_id():
    ints, texts = pa.array([0, 1, 2, 1]), pa.array(["a", "b", "c", "b"])
    for ids in (ints, texts):
        seeds = row_seeds(ids, 5)
        assert seeds.dtype == np.uint64 and len(set(seeds[:3].tolist())) == 3
        assert seeds[1] == seeds[3]  # a function of the id alone, not of the position
        np.testing.assert_array_equal(seeds, row_seeds(ids, 5))
        assert not set(seeds.tolist()) & set(row_seeds(ids, 6).tolist())
    # an id hashes the same whatever its integer type (an int32 Parquet column, say)
    np.testing.assert_array_equal(row_seeds(pa.array([7, 9], pa.int32()), 1),
                                  row_seeds(pa.array([7, 9]), 1))


def test_a_row_scores_the_same_in_any_chunk_and_batch(scorer, stored):
    model, card, tag = stored
    x, ids = digits_rows(300, seed=1), [f"img-{i}" for i in range(300)]
    whole = scorer.score(chunk(x, ids), "x")
    pieces = pa.concat_tables([scorer.score(chunk(x[i:i + 70], ids[i:i + 70]), "x")
                               for i in range(0, 300, 70)])
    assert pieces.equals(whole)
    small_batches = Scorer(model, card, tag, n_samples=8, seed=5, batch_size=7)
    order = np.random.default_rng(0).permutation(300)
    shuffled = small_batches.score(chunk(x[order], [ids[i] for i in order]), "x")
    assert shuffled.equals(whole.take(order))


def test_the_output_is_the_services_computation_keyed_by_id(scorer, stored):
    model, card, tag = stored
    x, ids = digits_rows(40, seed=2), list(range(100, 140))
    table = scorer.score(chunk(x, ids), "x")
    assert table.schema == output_schema(pa.int64(), len(card.class_names))
    samples = scorer.engine.sample_keyed(x, 8, row_seeds(pa.array(ids), 5), seed=5)
    summary = summarize(samples)
    decision = decide(summary, card.calibration_for(8))
    columns = table.to_pydict()
    assert columns["id"] == ids and columns["error"] == [None] * 40
    assert columns["label"] == summary.label.tolist()
    assert columns["class_name"] == [card.class_names[i] for i in summary.label]
    np.testing.assert_array_equal(np.array(columns["probabilities"]), summary.mean)
    np.testing.assert_array_equal(np.array(columns["std"]), summary.std)
    np.testing.assert_array_equal(columns["mutual_information"], summary.mutual_information)
    np.testing.assert_array_equal(columns["expected_entropy"], summary.expected_entropy)
    np.testing.assert_array_equal(columns["risk_score"], decision.risk_scores)
    assert columns["flagged"] == decision.flagged.tolist()
    assert columns["reasons"] == [decision.reasons(row) for row in range(40)]
    assert columns["prediction_set"] == [
        [name for name, chosen in zip(card.class_names, row, strict=True) if chosen]
        for row in decision.prediction_sets]
    assert set(columns["model"]) == {tag} and set(columns["n_samples"]) == {8}
    assert set(columns["calibrated_n_samples"]) == {card.calibration_for(8).n_samples}


def test_unusable_rows_keep_their_place_with_the_error_and_no_prediction(scorer):
    x = digits_rows(4, seed=3)
    bad = x.copy()
    bad[1, 0, 0] = 99.0
    table = scorer.score(chunk(bad, ["a", "b", "c", "d"]), "x")
    assert table.column("id").to_pylist() == ["a", "b", "c", "d"]
    assert table.column("error").to_pylist() == [
        None, "values must lie in the model's range [0, 16], got [0, 99]", None, None]
    assert table.column("label").to_pylist()[1] is None
    assert table.column("flagged").null_count == 1
    clean = scorer.score(chunk(x[[0, 2, 3]], ["a", "c", "d"]), "x")
    assert table.filter(pa.compute.is_null(table.column("error"))).equals(clean)


def test_a_chunk_with_no_usable_row(scorer):
    table = scorer.score(chunk(np.full((2, 8, 8), 50.0), [1, 2]), "x")
    assert table.num_rows == 2 and table.column("label").null_count == 2
