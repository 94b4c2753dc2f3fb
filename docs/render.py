"""Every measured figure on the pages (README.md and docs/) comes from a committed results
file, through this script, so that no figure can outlive its measurement.

A page asks for a table with a block::

    <!-- results: benchmarks/results/adaptive.json adaptive-throughput -->
    <!-- /results -->

and the script fills the block with the table that ``adaptive-throughput`` (a renderer
in ``TABLES``) makes of that file, followed by the line saying which command measured
it, at which commit, when and on which machine. A results file without those four
provenance keys (``commandline.provenance``) is refused: its figures cannot appear.
Images on the pages must be illustrations in ``docs/`` itself, or sit beside a results
file with provenance.

    python -m docs.render              # fill every page's results blocks
    python -m docs.render --check      # exit 1 naming each page whose blocks are stale
    python -m docs.render --openapi    # serve the default model; write its /docs.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

from loadtest.server import ServerError, served

REPOSITORY = Path(__file__).resolve().parents[1]
DOCS = REPOSITORY / "docs"
OPENAPI = DOCS / "api" / "openapi.json"
PROVENANCE = ("command", "commit", "date", "machine")
BLOCK = re.compile(r"^<!-- results: (?P<path>\S+) (?P<table>\S+) -->\n(?P<body>.*?)"
                   r"<!-- /results -->", re.S | re.M)
IMAGE = re.compile(r"!\[[^\]]*\]\((?P<path>[^)\s]+)\)")


class ResultsError(Exception):
    """A block that cannot be rendered (a one-line message naming the file)."""


def pages(root: Path) -> list[Path]:
    """README.md and every Markdown page of the site."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def load_results(path: Path, name: str) -> dict:
    """The results file at ``path`` (``name`` in messages); refused unless it records its
    provenance."""
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ResultsError(f"{name}: cannot read it as JSON: {error}") from None
    missing = [key for key in PROVENANCE if not isinstance(results, dict) or key not in results]
    if missing:
        raise ResultsError(f"{name}: no provenance ({', '.join(missing)} missing): run the "
                           "command that writes it again before its figures can appear")
    return results


def render_block(root: Path, path: str, table: str) -> str:
    """The body of one results block: the table, then where it was measured."""
    if table not in TABLES:
        raise ResultsError(f"{path}: no table named {table!r} (known: {', '.join(TABLES)})")
    results = load_results(root / path, path)
    return f"{TABLES[table](results)}\n\n{provenance_line(results)}\n"


def provenance_line(results: dict) -> str:
    return (f"*Measured with `{results['command']}` at commit `{results['commit'][:12]}` "
            f"on {results['date']}, {results['machine']}.*")


def render_page(text: str, root: Path) -> str:
    """``text`` with every results block filled from its file."""
    def fill(block: re.Match) -> str:
        body = render_block(root, block["path"], block["table"])
        return f"<!-- results: {block['path']} {block['table']} -->\n{body}<!-- /results -->"
    return BLOCK.sub(fill, text)


def unbacked_images(page: Path, text: str, root: Path) -> list[str]:
    """Images of ``page`` that are neither illustrations in docs/ itself nor beside a
    results file with provenance."""
    problems = []
    for match in IMAGE.finditer(text):
        image = (page.parent / match["path"]).resolve()
        if image.parent == (root / "docs").resolve():
            continue
        beside = [candidate for candidate in image.parent.glob("*.json")
                  if _has_provenance(candidate)]
        if not beside:
            problems.append(f"{page.relative_to(root)}: {match['path']} has no results file "
                            "with provenance beside it")
    return problems


def _has_provenance(path: Path) -> bool:
    try:
        load_results(path, path.name)
    except ResultsError:
        return False
    return True


def stale(root: Path) -> list[str]:
    """One line per page whose results blocks differ from their files, or that cannot be
    rendered, or whose images are not backed by a results file."""
    problems = []
    for page in pages(root):
        text = page.read_text()
        try:
            if render_page(text, root) != text:
                problems.append(f"{page.relative_to(root)}: a results table differs from "
                                "its file (run python -m docs.render)")
        except ResultsError as error:
            problems.append(f"{page.relative_to(root)}: {error}")
        problems += unbacked_images(page, text, root)
    return problems


def render_all(root: Path) -> None:
    for page in pages(root):
        text = page.read_text()
        rendered = render_page(text, root)
        if rendered != text:
            page.write_text(rendered)
            print(f"rendered {page.relative_to(root)}")


# --- the tables -------------------------------------------------------------------------

TABLES: dict[str, Callable[[dict], str]] = {}


def table(name: str):
    """Register a renderer: results -> a Markdown table."""
    def register(render: Callable[[dict], str]) -> Callable[[dict], str]:
        TABLES[name] = render
        return render
    return register


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


@table("targets")
def targets(results: dict) -> str:
    """Every target a measurement checks, the value measured when the file has one, and
    whether it was met."""
    return markdown_table(["target", "measured", "met"], [
        [target["target"], _measured(target), "yes" if target["met"] else "**no**"]
        for target in results["targets"]])


def _measured(target: dict) -> str:
    if "value" in target:
        return f"{target['value']:.3g}"
    return target.get("measured", "")


@table("mc-engine")
def mc_engine(results: dict) -> str:
    """The engine against a naive loop and a tiled call, per input dropout, B and N."""
    return markdown_table(
        ["input dropout", "B", "N", "naive ms", "tiled ms", "engine ms", "x naive", "x tiled",
         "engine GFLOP/s", "of matmul peak"],
        [["yes" if row["input_dropout"] else "no", row["batch"], row["n_samples"],
          f"{row['naive_ms']:.2f}", f"{row['tiled_ms']:.3f}", f"{row['engine_ms']:.3f}",
          f"{row['speedup_vs_naive']:.0f}", f"{row['speedup_vs_tiled']:.2f}",
          f"{row['engine_gflops']:.1f}", f"{row['fraction_of_peak']:.0%}"]
         for row in results["rows"]])


#: benchmarks.adaptive's loads, as the pages name them.
ADAPTIVE_LOADS = {"predict_64x4": "`/predict`, 64 images a request, 4 clients",
                  "batched_1x32": "`/predict_batched`, one image a request, 32 clients"}


@table("adaptive-throughput")
def adaptive_throughput(results: dict) -> str:
    """``"auto"`` against fixed N through HTTP: medians over the rounds, and the requests
    refused (429) over all rounds beside each rate; a refusal is a failure."""
    rows = []
    for key, figures in results["median"].items():
        load, n_samples = key.split(" N=")
        mean_n = figures.get("mean_n_samples") or float(n_samples)
        rows.append([ADAPTIVE_LOADS.get(load, load), n_samples, f"{mean_n:.1f}",
                     f"{figures['images_per_s']:,.0f}",
                     f"{figures['p50_ms']:.0f}", f"{figures['p95_ms']:.0f}",
                     figures["refused"], figures["failures"]])
    return markdown_table(["load", "N", "mean N used", "images/s (200s only)", "p50 ms",
                           "p95 ms", "refused (429)", "failures"], rows)


@table("overload-phases")
def overload_phases(results: dict) -> str:
    """Each phase of benchmarks.overload: answers per second, latency and the answers by
    status; 200/s counts 200 answers only."""
    phases = results["results"]
    named = [(name, phases[name]) for name in ("capacity", "overload", "recovery")
             if name in phases]
    if "big" in phases:
        named += [("one image alone", phases["big"]["idle"]),
                  ("one image beside 64 x 1000 requests", phases["big"]["small"]),
                  ("the 64 x 1000 requests", phases["big"]["big"])]
    if "budget" in phases:
        named.append(("latency budget, no N", phases["budget"]))
    return markdown_table(
        ["phase", "200/s", "p50 ms", "p99 ms", "200", "429", "5xx"],
        [[name, f"{phase['goodput_rps']:,.1f}", f"{phase['p50_ms']:,.1f}",
          f"{phase['p99_ms']:,.1f}", f"{phase['statuses']['200']:,}",
          f"{phase['statuses']['429']:,}", f"{phase['statuses']['5xx']:,}"]
         for name, phase in named])


@table("http-service")
def http_service(results: dict) -> str:
    """benchmarks.http_service's medians over its rounds: the engine in-process, one
    client's latency, and each path's rate under concurrent clients with its refusals."""
    median = results["median"]
    one = median["sequential"]
    rows = [["engine in-process, one image", "", "", f"{median['engine_ms']:.2f}", "", ""],
            [f"`{one['path']}`, one client", "", one["refused"], f"{one['p50_ms']:.2f}",
             f"{one['p95_ms']:.2f}", f"{one['p99_ms']:.2f}"]]
    for index, load in enumerate(median["concurrent"]):
        rates = [run["concurrent"][index]["rps"] for run in results["rounds"]]
        rows.append([f"`{load['path']}`, {load['clients']} clients",
                     f"{load['rps']:,.0f} ({min(rates):,.0f} to {max(rates):,.0f})",
                     load["refused"], f"{load['p50_ms']:.1f}", f"{load['p95_ms']:.1f}",
                     f"{load['p99_ms']:.1f}"])
    return markdown_table(["load", "200s/s (rounds' range)", "refused (429)", "p50 ms",
                           "p95 ms", "p99 ms"], rows)


@table("loop-cost")
def loop_cost(results: dict) -> str:
    """benchmarks.loop_cost's medians over its rounds, per route: the event loop's CPU per
    200 answer against the no-op BentoML service's, the other threads', the rate."""
    names = {"predict_1": "`/predict`, one image", "predict_64": "`/predict`, 64 images",
             "batched": "`/predict_batched`, one image", "v2_json": "V2 infer, JSON",
             "v2_binary": "V2 infer, binary"}
    rows = []
    for name, route in results["median"]["routes"].items():
        ratio = route["loop_ratio"]
        clients = results["big_clients"] if name == "predict_64" else results["clients"]
        rows.append([names.get(name, name), clients, f"{route['loop_us']['median']:,.0f}",
                     f"{route['noop_loop_us']['median']:,.0f}",
                     f"{ratio['median']:.2f} ({ratio['min']:.2f} to {ratio['max']:.2f})",
                     f"{route['other_us']['median']:,.0f}",
                     f"{route['images_per_s']['median']:,.0f}", route["refused"]])
    engine = results["median"]["engine_images_per_s"]
    return markdown_table(
        ["route", "clients", "event loop, us per answer", "no-op service, us",
         "ratio (rounds' range)", "other threads, us", "images/s", "refused (429)"],
        rows) + (f"\n\nIn-process engine, batches of {results['clients']}: "
                 f"{engine['median']:,.0f} images/s ({engine['min']:,.0f} to "
                 f"{engine['max']:,.0f} over the rounds).")


@table("scoring")
def scoring(results: dict) -> str:
    """uq-score against the engine, locally and on Ray (medians over the rounds)."""
    median = results["median"]
    model = results.get("model", "a tiny digits classifier")
    rows = [[f"local runner, in-process ({model})",
             f"{median['local_rows_per_second']:,.0f} rows/s = "
             f"{median['local_vs_engine']:.2f}x the engine's "
             f"{median['engine_rows_per_second']:,.0f} rows/s"]]
    if results.get("wide_model"):
        wide = results["wide_model"]["median"]
        rows.append([f"the same with a wider model ({results['wide_model']['model']})",
                     f"{wide['local_rows_per_second']:,.0f} against "
                     f"{wide['engine_rows_per_second']:,.0f} rows/s = "
                     f"{wide['local_vs_engine']:.2f}x"])
    return markdown_table(["measurement", "result"], [
        *rows,
        ["`uq-score` locally, whole command", f"{median['local_command_seconds']:.1f} s"],
        ["`uq-score --ray-address`, whole command", f"{median['ray_command_seconds']:.1f} s = "
         f"{median['ray_vs_local_time']:.2f}x the local time"],
        ["peak RSS, local", f"{median['local_peak_rss_gb']:.2f} GB"]])


@table("model-comparison")
def model_comparison(results: dict) -> str:
    """benchmarks.models: uq-train's presets side by side, through HTTP."""
    from benchmarks.models import at, best_auroc
    presets = results["presets"]
    n = results["speed_n_samples"]

    def row(name: str, figure: Callable[[dict], str]) -> list[str]:
        return [name, *(figure(result) for result in presets.values())]

    rows = [row(f"{name} at N={n}", lambda r, key=key: f"{at(r, n)[key]:.4f}")
            for name, key in (("MC accuracy", "accuracy"), ("NLL", "nll"), ("ECE", "ece"),
                              ("Brier", "brier"))]
    for count in (10, 30, 100, "auto"):
        rows.append(row(f"unflagged at N={count} (error among those not flagged for error "
                        "risk)", lambda r, c=count: (
                            f"{1 - at(r, c)['flagged_fraction']:.1%} "
                            f"({at(r, c)['selective_error']:.4f})")))
    rows += [
        row('"auto": mean N used', lambda r: f"{at(r, 'auto')['mean_n_samples']:.1f}"),
        row(f"prediction sets at N={n}: coverage, mean size", lambda r: (
            f"{at(r, n)['conformal_coverage']:.3f}, {at(r, n)['conformal_mean_set_size']:.2f}")),
        *(row(f"{name.replace('_', ' ')}: flagged, best AUROC (MI's)", lambda r, s=name: (
            f"{r['shifted'][s]['flagged_fraction']:.1%}, "
            f"{best_auroc(r, s):.3f} "
            f"({r['shifted'][s]['auroc']['mutual_information']:.3f})"))
          for name in next(iter(presets.values()))["shifted"]),
        row("training and calibration",
            lambda r: f"{r['train_and_calibrate_seconds'] / 60:.1f} min"),
        row(f"images/s at N={n}, {results['load']} (rounds' range)", _images_per_second),
        row(f"one image at N={n}, p50", lambda r: f"{r['speed']['one_image_p50_ms']:.1f} ms"),
    ]
    return markdown_table(["", *presets], rows)


def _images_per_second(result: dict) -> str:
    speed = result["speed"]
    low, high = speed["images_per_second_range"]
    return (f"{speed['images_per_second']:,.0f} ({low:,.0f} to {high:,.0f}), "
            f"{speed['failures']} failed")


# --- the OpenAPI document ---------------------------------------------------------------


#: What the committed document says in place of BentoML's introduction, whose badges
#: are images on the internet: the site loads nothing from outside.
OPENAPI_DESCRIPTION = ("The service's own `GET /docs.json`, as served for the default "
                       "model with the default settings (BentoML's introduction left out).")


def write_openapi(model: str) -> None:
    """Serve ``model`` on loopback and write the /docs.json it serves to OPENAPI, with
    OPENAPI_DESCRIPTION in place of BentoML's introduction."""
    with tempfile.TemporaryDirectory(prefix="uq-docs-") as log_dir:
        try:
            with served(model, Path(log_dir)) as url, \
                    urllib.request.urlopen(f"{url}/docs.json", timeout=30) as response:
                document = json.load(response)
        except ServerError as error:
            raise ResultsError(str(error)) from None
    document["info"]["description"] = OPENAPI_DESCRIPTION
    OPENAPI.parent.mkdir(parents=True, exist_ok=True)
    OPENAPI.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    print(f"wrote {OPENAPI.relative_to(REPOSITORY)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m docs.render", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 naming each stale page")
    action.add_argument("--openapi", action="store_true",
                        help="serve --model and write its /docs.json to docs/api/openapi.json")
    parser.add_argument("--model", default="uq-classifier:latest",
                        help="the model --openapi serves (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        if args.openapi:
            write_openapi(args.model)
        elif args.check:
            problems = stale(REPOSITORY)
            for problem in problems:
                print(problem, file=sys.stderr)
            return 1 if problems else 0
        else:
            render_all(REPOSITORY)
    except ResultsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
