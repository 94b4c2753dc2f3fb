"""uq-score --ray-address on a real local Ray cluster: the same bits as the local run."""

import json
import os
import subprocess
import sys

import pytest

from scoring.cli import main
from scoring.output import SUMMARY
from tests.conftest import REPOSITORY
from tests.scoring.conftest import digits_rows, scores, without_runner, write_images, write_npz

pytestmark = [pytest.mark.ray,
              pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.*")]


def inputs(folder, kind: str) -> str:
    if kind == "npz":  # read by the driver, shipped through the object store
        return write_npz(folder / "rows.npz", digits_rows(40, seed=8),
                         [f"scan-{i}" for i in range(40)], compressed=True)
    photos = folder / "photos"  # read by Ray Data's reader on the workers
    write_images(photos, digits_rows(6, seed=9))
    (photos / "002.png").write_bytes(b"not an image")
    return str(photos)


def test_workers_cannot_reach_the_model_store(ray_cluster):
    import ray

    theirs = ray.get(ray.remote(lambda: os.environ["BENTOML_HOME"]).remote())
    assert theirs != os.environ["BENTOML_HOME"]
    assert not os.path.exists(os.path.join(theirs, "models"))


@pytest.mark.parametrize("kind", ["npz", "images"])
def test_ray_scores_equal_the_local_run_bit_for_bit(ray_cluster, classifier_tag, tmp_path,
                                                    kind):
    source = inputs(tmp_path, kind)
    common = ["--model", classifier_tag, "--input", source, "--seed", "3", "--no-progress"]
    assert main([*common, "--output", str(tmp_path / "local"), "--chunk-size", "16"]) == 0
    assert main([*common, "--output", str(tmp_path / "ray"), "--ray-address", ray_cluster]) == 0
    assert scores(tmp_path / "ray").equals(scores(tmp_path / "local"))
    local, remote = (json.loads((tmp_path / run / SUMMARY).read_text())
                     for run in ("local", "ray"))
    assert without_runner(remote) == without_runner(local)
    assert remote["runner"]["kind"] == "ray" and remote["runner"]["actors"] == 1
    if kind == "images":
        assert remote["unreadable"]["rows"] == [
            {"id": "002.png", "error": "not a readable PNG or JPEG image"}]


@pytest.mark.parametrize("mode", [None, "token"], ids=["no-auth-mode", "no-token"])
def test_a_client_without_the_clusters_token_is_told_what_to_set(ray_cluster, classifier_tag,
                                                                 tmp_path, mode):
    """The local cluster has token authentication (Ray's default); uq-score in another
    process, with no token in its environment or home, fails in one line that says what to
    set, rather than Ray's retries and 'Failed to connect'."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_AUTH_")}
    env.update(HOME=str(tmp_path), RAY_USAGE_STATS_ENABLED="0",
               RAY_gcs_server_port_wait_time_s="2")  # Ray's joining attempts: 2, not 20
    if mode:
        env["RAY_AUTH_MODE"] = mode
    source = write_npz(tmp_path / "rows.npz", digits_rows(4))
    result = subprocess.run(
        [sys.executable, "-m", "scoring.cli", "--model", classifier_tag, "--input", source,
         "--output", str(tmp_path / "out"), "--ray-address", ray_cluster, "--no-progress"],
        cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"uq-score: error: cannot join the Ray cluster at {ray_cluster}: it requires its token: "
        "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN to the cluster's token (`ray get-auth-token` "
        "on its head node prints it)")
