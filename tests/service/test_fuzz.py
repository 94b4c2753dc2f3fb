"""Property-based fuzzing of the real server (tests/conftest.py's ``server``) from its
own OpenAPI document, /docs.json, with schemathesis: valid and invalid requests for
every operation (its examples, coverage and fuzzing phases), a bounded number per
operation.

Checked on every answer:

- no 5xx (``not_a_server_error``): bad input must get a 4xx;
- the answer conforms to the document where the document can say it: its body
  against the documented schema of its status (``response_schema_conformance``),
  its content type (``content_type_conformance``), and a method the document does
  not list gets 405 with ``Allow`` (``unsupported_method``).

Not checked, on purpose:

- that each status is documented (``status_code_conformance``): BentoML writes the
  document and lists 200, 400, 404 and 500 only, while the service answers 413, 415,
  429 and 503 by design;
- that valid requests are accepted and invalid ones refused
  (``positive_data_acceptance``, ``negative_data_rejection``): some rules cannot be
  stated in the document (``min_samples`` at most ``n_samples``, "auto" only for a
  card calibrated for it, signed feedback tokens), and BentoML drops ``null`` from
  the top-level fields' schemas although the service takes it.

Not fuzzed:

- GET /livez, /readyz, /healthz and /metrics: BentoML's own, they take no input;
- the Open Inference Protocol under /v2 and the web page under /ui: mounted apps
  the document does not describe (tests/service/test_oip.py covers /v2's errors);
- the stateful phase (sequences of calls): no operation creates what another reads.

schemathesis runs through its command line: its pytest integration for a schema
from a fixture (``schemathesis.pytest.from_fixture``) sets ``Node._nodeid``, which
pytest 9.2 no longer has. A failure shows the command's report, with a curl
command that reproduces each failing request.
"""

import subprocess
import sys

import httpx
import jsonschema
import pytest

from artifacts.inputs import InputSpec
from service.schemas import instance_json_schema
from tests.conftest import SERVICE_ENV

#: Requests per operation in the fuzzing phase (schemathesis's default; the coverage
#: phase adds its own boundary and malformed cases): about 1100 requests in 15 s on
#: 2 cores.
EXAMPLES_PER_OPERATION = 100
CHECKS = ("not_a_server_error", "response_schema_conformance", "content_type_conformance",
          "unsupported_method")


def test_no_request_gets_a_server_error_and_answers_conform(server, tmp_path):
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{server}/docs.json",
        "--phases", "examples,coverage,fuzzing",
        "--checks", ",".join(CHECKS),
        "--exclude-method", "GET",
        "--mode", "all",
        "--max-examples", str(EXAMPLES_PER_OPERATION),
        "--generation-database", "none",  # nothing written to the working directory
        "--suppress-health-check", "all",
        "--request-timeout", "60",
        "--continue-on-failure",
        "--warnings", "off",
        "--no-color",
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-20_000:] + result.stderr[-5_000:]


def request_schema(document: dict, path: str) -> dict:
    return document["paths"][path]["post"]["requestBody"]["content"]["application/json"][
        "schema"]["properties"]


def test_the_document_states_the_constraints_so_that_requests_reach_the_checks(server):
    document = httpx.get(f"{server}/docs.json").json()
    most_instances, most_samples = (int(SERVICE_ENV[name]) for name in
                                    ("UQ_MAX_INSTANCES", "UQ_MAX_SAMPLES"))
    predict = request_schema(document, "/predict")
    instances = predict["instances"]
    assert (instances["minItems"], instances["maxItems"]) == (1, most_instances)
    # the test run's classifier: 8 x 8 digits, values in [0, 16]
    assert instances["items"]["oneOf"] == instance_json_schema(
        InputSpec((8, 8), (0.0, 16.0)))["oneOf"]
    assert predict["n_samples"]["oneOf"] == [
        {"type": "integer", "minimum": 1, "maximum": most_samples},
        {"type": "string", "enum": ["auto"]}]
    budget = predict["latency_budget_ms"]
    assert (budget["minimum"], budget["exclusiveMinimum"]) == (0, True)  # OpenAPI 3.0's > 0
    assert (predict["min_samples"]["minimum"], predict["min_samples"]["maximum"]) == (
        1, most_samples)
    items = request_schema(document, "/predict_batched")["items"]
    assert (items["minItems"], items["maxItems"]) == (1, most_instances)
    batch_item = document["components"]["schemas"]["BatchItem"]["properties"]
    assert batch_item["instance"]["oneOf"] == instances["items"]["oneOf"]


@pytest.mark.parametrize(("spec", "valid", "invalid"), [
    (InputSpec((2, 3), (0.0, 255.0)),
     [[0, 1, 2, 3, 4, 255], [[0, 1, 2], [3, 4, 5.5]]],
     [[0, 1, 2, 3, 4], [[0, 1, 2], [3, 4]], [0, 1, 2, 3, 4, 256], [[0, 1, 2, 3, 4, 5]]]),
    (InputSpec((4,), (-1.0, 1.0)),
     [[-1, 0, 0.5, 1]],
     [[-1, 0, 0.5], [[-1, 0], [0.5, 1]], [-1, 0, 0.5, 1.5]]),
])
def test_the_instance_schema_takes_flat_or_shaped_instances_in_range(spec, valid, invalid):
    validator = jsonschema.Draft7Validator(instance_json_schema(spec))
    assert all(validator.is_valid(instance) for instance in valid)
    assert not any(validator.is_valid(instance) for instance in invalid)
