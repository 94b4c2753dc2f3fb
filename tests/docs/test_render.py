"""The pages' measured figures against their results files (docs/render.py), the README's
length, and the committed OpenAPI document against the one the real server serves."""

import json

import httpx
import pytest

from artifacts.inputs import InputSpec
from docs import render
from service.schemas import instance_json_schema
from service.settings import Settings
from tests.conftest import SERVICE_ENV

PROVENANCE = {"command": "python -m benchmarks.adaptive --rounds 3",
              "commit": "0123456789abcdef", "date": "2026-12-07T17:00:00+00:00",
              "machine": "AMD EPYC 7B13, 2 cores, Linux x86_64"}
ADAPTIVE = {"median": {
    "predict_64x4 N=50": {"images_per_s": 1114.6, "p50_ms": 226.9, "p95_ms": 243.0,
                          "refused": 117, "failures": 117},
    "predict_64x4 N=auto": {"images_per_s": 2858.5, "p50_ms": 85.5, "p95_ms": 113.6,
                            "mean_n_samples": 10.24, "refused": 0, "failures": 0}}}
BLOCK = "<!-- results: results/adaptive.json adaptive-throughput -->\n<!-- /results -->\n"


def test_every_page_shows_what_its_results_files_hold():
    assert render.stale(render.REPOSITORY) == []


def test_the_readme_fits_on_one_screen_of_scrolling():
    assert len((render.REPOSITORY / "README.md").read_text().splitlines()) <= 300


@pytest.fixture
def site(tmp_path):
    """A repository of one README and one page asking for a table."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "README.md").write_text("# Front door\n")
    (tmp_path / "docs" / "page.md").write_text("# Throughput\n\n" + BLOCK)
    return tmp_path


def write_results(site, results: dict) -> None:
    (site / "results" / "adaptive.json").write_text(json.dumps(results))


def test_a_block_is_filled_with_the_table_and_where_it_was_measured(site):
    write_results(site, {**PROVENANCE, **ADAPTIVE})
    page = render.render_page(BLOCK, site)
    load = "`/predict`, 64 images a request, 4 clients"
    assert f"| {load} | 50 | 50.0 | 1,115 | 227 | 243 | 117 | 117 |" in page
    assert f"| {load} | auto | 10.2 | 2,858 | 86 | 114 | 0 | 0 |" in page
    assert ("*Measured with `python -m benchmarks.adaptive --rounds 3` at commit "
            "`0123456789ab` on 2026-12-07T17:00:00+00:00, AMD EPYC 7B13, 2 cores, "
            "Linux x86_64.*") in page
    assert render.stale(site) == ["docs/page.md: a results table differs from its file "
                                  "(run python -m docs.render)"]
    (site / "docs" / "page.md").write_text(page)
    assert render.stale(site) == []


def test_a_figure_typed_into_a_block_by_hand_is_found(site):
    write_results(site, {**PROVENANCE, **ADAPTIVE})
    page = render.render_page(BLOCK, site)
    (site / "docs" / "page.md").write_text(page.replace("2,858", "3,000"))
    assert render.stale(site) == ["docs/page.md: a results table differs from its file "
                                  "(run python -m docs.render)"]


def test_a_file_without_provenance_is_refused(site):
    write_results(site, {**ADAPTIVE, "command": "python -m benchmarks.adaptive"})
    [problem] = render.stale(site)
    assert problem.startswith("docs/page.md: ")
    assert "no provenance (commit, date, machine missing)" in problem
    with pytest.raises(render.ResultsError, match="no provenance"):
        render.render_page(BLOCK, site)


def test_an_unknown_table_is_named(site):
    write_results(site, {**PROVENANCE, **ADAPTIVE})
    (site / "docs" / "page.md").write_text(BLOCK.replace("adaptive-throughput", "speed"))
    [problem] = render.stale(site)
    assert "no table named 'speed'" in problem


def test_a_plot_needs_a_results_file_with_provenance_beside_it(site):
    (site / "docs" / "shot.png").write_bytes(b"")
    (site / "docs" / "plots").mkdir()
    (site / "docs" / "plots" / "curve.png").write_bytes(b"")
    (site / "docs" / "plots" / "curve.json").write_text(json.dumps({"rows": []}))
    (site / "docs" / "page.md").write_text(
        "![a screenshot](shot.png)\n![a plot](plots/curve.png)\n")
    assert render.stale(site) == ["docs/page.md: plots/curve.png has no results file with "
                                  "provenance beside it"]
    (site / "docs" / "plots" / "curve.json").write_text(json.dumps(PROVENANCE))
    assert render.stale(site) == []


def test_the_command_checks_then_renders(site, monkeypatch, capsys):
    write_results(site, {**PROVENANCE, **ADAPTIVE})
    monkeypatch.setattr(render, "REPOSITORY", site)
    assert render.main(["--check"]) == 1
    assert "docs/page.md: a results table differs" in capsys.readouterr().err
    assert render.main([]) == 0
    assert render.main(["--check"]) == 0
    assert "1,115" in (site / "docs" / "page.md").read_text()


def model_independent(document: dict, instance: InputSpec, most_instances: int,
                      most_samples: int) -> dict:
    """``document`` with what the served model and the settings state put by name: each
    instance's schema (shape and value range), the most instances a request holds (and
    images /generate makes) and the most samples it asks."""
    shapes = instance_json_schema(instance)["oneOf"]

    def named(node):
        if isinstance(node, list):
            return [named(value) for value in node]
        if not isinstance(node, dict):
            return node
        if node.get("oneOf") == shapes:
            return "<an instance of the served model>"
        node = {key: named(value) for key, value in node.items()}
        for bound, value, name in (("maxItems", most_instances, "<UQ_MAX_INSTANCES>"),
                                   ("maximum", most_instances, "<UQ_MAX_INSTANCES>"),
                                   ("maximum", most_samples, "<UQ_MAX_SAMPLES>")):
            if node.get(bound) == value:
                node[bound] = name
        return node
    return named(document)


def test_the_committed_openapi_document_is_the_one_the_service_serves(server):
    """The committed document comes from the default Fashion-MNIST model with the default
    settings; the test run's server serves an 8 x 8 digits model with settings of its
    own, and the committed one leaves BentoML's introduction out. Everything else must be
    the same."""
    committed = json.loads(render.OPENAPI.read_text())
    served = httpx.get(f"{server}/docs.json", timeout=30).json()
    assert committed["info"].pop("description") == render.OPENAPI_DESCRIPTION
    served["info"].pop("description")  # BentoML's introduction
    defaults = Settings.model_fields
    assert model_independent(
        committed, InputSpec((28, 28), (0.0, 255.0)), defaults["max_instances"].default,
        defaults["max_samples"].default,
    ) == model_independent(
        served, InputSpec((8, 8), (0.0, 16.0)), int(SERVICE_ENV["UQ_MAX_INSTANCES"]),
        int(SERVICE_ENV["UQ_MAX_SAMPLES"]))


def test_the_engine_table_and_its_targets():
    results = {**PROVENANCE, "rows": [
        {"input_dropout": True, "batch": 1, "n_samples": 30, "naive_ms": 152.771,
         "tiled_ms": 1.0604, "engine_ms": 0.7051, "speedup_vs_naive": 216.7,
         "speedup_vs_tiled": 1.504, "engine_gflops": 22.71, "fraction_of_peak": 0.0565}],
        "targets": [{"target": "B=1, N=30: engine / naive loop >= 150x", "value": 216.7,
                     "met": True},
                    {"target": "B=256, N=100: engine >= 40% of matmul peak", "value": 0.31,
                     "met": False}]}
    assert render.TABLES["mc-engine"](results).splitlines()[2] == (
        "| yes | 1 | 30 | 152.77 | 1.060 | 0.705 | 217 | 1.50 | 22.7 | 6% |")
    assert render.TABLES["targets"](results).splitlines()[2:] == [
        "| B=1, N=30: engine / naive loop >= 150x | 217 | yes |",
        "| B=256, N=100: engine >= 40% of matmul peak | 0.31 | **no** |"]


def test_the_overload_phases_count_each_status_apart():
    phase = {"goodput_rps": 466.5, "p50_ms": 108.6, "p99_ms": 143.7,
             "statuses": {"200": 28043, "429": 72793, "5xx": 0}}
    table = render.TABLES["overload-phases"]({"results": {"overload": phase}})
    assert table.splitlines()[2] == "| overload | 466.5 | 108.6 | 143.7 | 28,043 | 72,793 | 0 |"


def test_the_service_table_shows_each_rate_with_its_spread_beside_its_refusals():
    load = {"path": "/predict", "clients": 32, "rps": 649.2, "refused": 12, "p50_ms": 44.1,
            "p95_ms": 60.2, "p99_ms": 72.3}
    median = {"engine_ms": 2.08, "concurrent": [load], "sequential": {
        "path": "/predict", "refused": 0, "p50_ms": 4.64, "p95_ms": 5.9, "p99_ms": 6.8}}
    rounds = [{"concurrent": [{**load, "rps": rate}]} for rate in (610.4, 649.2, 702.9)]
    table = render.TABLES["http-service"]({"median": median, "rounds": rounds})
    assert table.splitlines()[2:] == [
        "| engine in-process, one image |  |  | 2.08 |  |  |",
        "| `/predict`, one client |  | 0 | 4.64 | 5.90 | 6.80 |",
        "| `/predict`, 32 clients | 649 (610 to 703) | 12 | 44.1 | 60.2 | 72.3 |"]


def test_the_loop_cost_table_shows_each_route_against_the_noop_service():
    def spread(median, low, high):
        return {"median": median, "min": low, "max": high}

    route = {"loop_us": spread(537.4, 480.0, 741.0), "noop_loop_us": spread(425.0, 365.0, 443.0),
             "other_us": spread(1514.2, 1478.0, 1687.0), "images_per_s": spread(210.4, 46, 483),
             "loop_ratio": spread(1.32, 1.21, 1.74), "refused": 43, "failures": 43}
    results = {"clients": 32, "big_clients": 4, "median": {
        "engine_images_per_s": spread(225.0, 46.0, 759.0), "routes": {"batched": route}}}
    lines = render.TABLES["loop-cost"](results).splitlines()
    assert lines[2] == ("| `/predict_batched`, one image | 32 | 537 | 425 | 1.32 (1.21 to 1.74) "
                        "| 1,514 | 210 | 43 |")
    assert lines[-1] == ("In-process engine, batches of 32: 225 images/s (46 to 759 over the "
                         "rounds).")
