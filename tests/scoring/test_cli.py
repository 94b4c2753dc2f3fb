"""uq-score on one machine: output, bit-identity across partitionings, resuming, bad input."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from artifacts.inputs import InputSpec, parse_image
from scoring.cli import main
from scoring.output import MANIFEST, SCORES, SUMMARY, written_shards
from tests.conftest import REPOSITORY
from tests.scoring.conftest import (
    digits_rows,
    one_line_error,
    scores,
    without_runner,
    write_images,
    write_npz,
)
from training.data import load_dataset

COLUMNS = ["id", "label", "class_name", "confidence", "probabilities", "std",
           "predictive_entropy", "expected_entropy", "mutual_information", "risk_score",
           "novelty_score", "flagged", "reasons", "prediction_set", "model", "n_samples",
           "calibrated_n_samples", "error"]


def score(classifier_tag, source, output, *options):
    return main(["--model", classifier_tag, "--input", source, "--output", str(output),
                 "--seed", "11", *options])


@pytest.fixture(scope="module")
def backlog(tmp_path_factory):
    """300 digits-like rows with string ids, in an npz file."""
    folder = tmp_path_factory.mktemp("backlog")
    x = digits_rows(300, seed=4)
    return write_npz(folder / "backlog.npz", x, [f"scan-{i:04d}" for i in range(300)]), x


@pytest.fixture(scope="module")
def reference(classifier_tag, backlog, tmp_path_factory):
    """The backlog scored in chunks of 128 rows: the output every other run must equal."""
    output = tmp_path_factory.mktemp("reference") / "run"
    assert score(classifier_tag, backlog[0], output, "--chunk-size", "128") == 0
    return output


def test_scores_every_row_with_a_summary(reference, classifier_tag, stored):
    _, card, tag = stored
    assert sorted(os.listdir(reference)) == [MANIFEST, SCORES, SUMMARY]
    assert written_shards(reference) == {0, 1, 2}
    table = scores(reference)
    assert table.column_names == COLUMNS and table.num_rows == 300
    assert table.column("id").to_pylist() == [f"scan-{i:04d}" for i in range(300)]
    assert set(table.column("model").to_pylist()) == {tag}
    assert set(table.column("n_samples").to_pylist()) == {card.default_n_samples}
    summary = json.loads((reference / SUMMARY).read_text())
    flagged = sum(table.column("flagged").to_pylist())
    novel = sum("novelty" in reasons for reasons in table.column("reasons").to_pylist())
    assert summary["rows"] == summary["scored"] == 300
    assert summary["model"] == tag and summary["seed"] == 11
    assert summary["flagged"] == {"count": flagged, "fraction": flagged / 300}
    assert summary["flagged_by_reason"]["novelty"] == {"count": novel, "fraction": novel / 300}
    assert sum(summary["labels"].values()) == 300
    assert summary["unreadable"] == {"count": 0, "listed": 0, "rows": []}
    assert summary["drift"]["rows"] == 300 and summary["drift"]["reference_n_samples"] == 8
    assert summary["drift"]["score"] == max(summary["drift"]["scores"].values())
    assert summary["runner"]["kind"] == "local" and summary["runner"]["chunks"] == 3


def test_the_summary_scores_drift_against_the_calibration_reference(classifier_tag, tmp_path):
    digits = load_dataset("digits").x_test  # 360 rows drawn as the calibration rows were
    inputs = {"digits": digits, "inverted": 16 - digits, "few": digits[:150]}
    drift = {}
    for name, x in inputs.items():
        assert score(classifier_tag, write_npz(tmp_path / f"{name}.npz", x),
                     tmp_path / name) == 0
        drift[name] = json.loads((tmp_path / name / SUMMARY).read_text())["drift"]
    assert drift["inverted"]["score"] > 2 * drift["digits"]["score"]
    assert drift["inverted"]["drifted"] and not drift["digits"]["drifted"]
    assert drift["few"] == {"score": None, "note": "no drift score: 150 scored rows, fewer "
                            "than the 200 of the service's drift window"}
    assert score(classifier_tag, write_npz(tmp_path / "n3.npz", digits), tmp_path / "n3",
                 "--n-samples", "3") == 0
    note = json.loads((tmp_path / "n3" / SUMMARY).read_text())["drift"]["note"]
    assert note.startswith("no drift score: the card holds no calibration reference at N = 3")


def test_other_chunk_and_batch_sizes_give_the_same_bits(reference, classifier_tag, backlog,
                                                        tmp_path):
    assert score(classifier_tag, backlog[0], tmp_path / "run", "--chunk-size", "77",
                 "--batch-size", "5", "--no-progress") == 0
    assert len(written_shards(tmp_path / "run")) == 4
    assert scores(tmp_path / "run").equals(scores(reference))
    assert without_runner(json.loads((tmp_path / "run" / SUMMARY).read_text())) == {
        **without_runner(json.loads((reference / SUMMARY).read_text())),
        "input": backlog[0]}


def test_a_rerun_resumes_where_the_run_stopped(reference, classifier_tag, backlog, tmp_path,
                                               capsys):
    output = tmp_path / "run"
    assert score(classifier_tag, backlog[0], output, "--chunk-size", "128") == 0
    kept = output / SCORES / "part-00000.parquet"
    kept_time = kept.stat().st_mtime_ns
    (output / SCORES / "part-00002.parquet").unlink()  # as if stopped before the last shard
    (output / SUMMARY).unlink()
    capsys.readouterr()
    assert score(classifier_tag, backlog[0], output, "--chunk-size", "128") == 0
    err = capsys.readouterr().err
    assert "resuming: 2 of 3 shards already written" in err
    assert "shard 3/3: 300/300 rows" in err
    assert kept.stat().st_mtime_ns == kept_time
    assert scores(output).equals(scores(reference))
    # complete: a third run does nothing
    assert score(classifier_tag, backlog[0], output, "--chunk-size", "128") == 0
    assert "already holds this run, complete" in capsys.readouterr().err


def test_a_rerun_with_other_settings_is_refused(reference, classifier_tag, backlog, capsys):
    assert score(classifier_tag, backlog[0], reference, "--chunk-size", "128",
                 "--n-samples", "5") == 2
    assert "holds a run with other settings (n_samples: 8, now 5)" in one_line_error(capsys)


def test_an_image_folder_is_converted_as_the_card_says(classifier_tag, stored, tmp_path,
                                                       capsys):
    _, card, _ = stored
    folder = tmp_path / "photos"
    ids = write_images(folder, digits_rows(9, seed=6))
    (folder / "004.png").write_bytes(b"\x89PNG broken")
    assert score(classifier_tag, str(folder), tmp_path / "images") == 0
    assert "8 of 9 rows scored, 1 unreadable" in capsys.readouterr().err
    summary = json.loads((tmp_path / "images" / SUMMARY).read_text())
    assert summary["unreadable"] == {"count": 1, "listed": 1, "rows": [
        {"id": "004.png", "error": "not a readable PNG or JPEG image"}]}
    assert summary["rows"] == 9 and summary["scored"] == 8
    # the same rows as arrays (converted by the service's parse_image), same ids: same scores
    spec = InputSpec(tuple(card.input_shape), tuple(card.value_range))
    good = sorted(name for name in ids if name != "004.png")
    arrays = np.stack([parse_image(str(folder / name), spec) for name in good])
    assert score(classifier_tag, write_npz(tmp_path / "same.npz", arrays, good),
                 tmp_path / "arrays") == 0
    from_images = scores(tmp_path / "images")
    assert from_images.filter(pa.compute.is_valid(from_images.column("error"))).column(
        "id").to_pylist() == ["004.png"]
    assert from_images.filter(pa.compute.is_null(from_images.column("error"))).equals(
        scores(tmp_path / "arrays"))


def test_a_parquet_dataset_scores_like_the_npz(reference, classifier_tag, backlog, tmp_path):
    x = backlog[1]
    folder = tmp_path / "table"
    folder.mkdir()
    for part, start in enumerate(range(0, 300, 120)):
        rows = slice(start, start + 120)
        pq.write_table(pa.table({"id": [f"scan-{i:04d}" for i in range(300)][rows],
                                 "x": x[rows].tolist()}), folder / f"{part}.parquet")
    assert score(classifier_tag, str(folder), tmp_path / "run", "--no-progress") == 0
    assert scores(tmp_path / "run").equals(scores(reference))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("options, message", [
    (["--input", "npz:/nonexistent/backlog.npz"], "input /nonexistent/backlog.npz does not exist"),
    (["--model", "no-such-model:latest"], "model 'no-such-model:latest' is not in the store"),
    (["--model", "Bad Tag!"], "is not a valid BentoML tag"),
    (["--n-samples", "0"], "argument --n-samples: must be >= 1, got 0"),
    (["--seed", "-3"], "argument --seed: must be >= 0, got -3"),
    (["--input", "WRONG_SHAPE"], r"x has shape [4, 7, 7], but the model takes [rows, 8, 8]"),
    (["--output", "NOT_EMPTY"], "exists and holds no uq-score run"),
    (["--ray-address", "127.0.0.1:FREE_PORT"], "nothing accepts connections there"),
])
def test_bad_input_is_one_line_and_exit_2(classifier_tag, backlog, tmp_path, capsys, options,
                                          message):
    write_npz(tmp_path / "wrong.npz", np.zeros((4, 7, 7)))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "thesis.txt").write_text("keep me")
    replacements = {"WRONG_SHAPE": f"npz:{tmp_path}/wrong.npz", "NOT_EMPTY": str(
        tmp_path / "full"), "FREE_PORT": str(free_port())}
    options = [next((value.replace(key, new) for key, new in replacements.items()
                     if key in value), value) for value in options]
    defaults = {"--model": classifier_tag, "--input": backlog[0],
                "--output": str(tmp_path / "out")}
    for flag, value in defaults.items():
        if flag not in options:
            options += [flag, value]
    try:
        code = main(options)
    except SystemExit as exit:  # argparse's own type errors
        code = exit.code
    assert code == 2
    assert message in one_line_error(capsys)
    assert (tmp_path / "full" / "thesis.txt").read_text() == "keep me"


def test_the_console_script_reports_a_missing_input_in_one_line(tmp_path):
    script = REPOSITORY / ".venv" / "bin" / "uq-score"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "scoring.cli"]
    result = subprocess.run(
        [*command, "--input", f"npz:{tmp_path}/none.npz", "--output", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == f"uq-score: error: input {tmp_path}/none.npz does not exist"
