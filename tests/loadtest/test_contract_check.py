"""The contract check (python -m loadtest.contract_check) against the test run's real
``bentoml serve``: what CI runs against the serving install, the image and the Bento."""

from loadtest.contract_check import main
from loadtest.server import free_port


def test_the_real_server_keeps_the_contract(server, server_log, capsys):
    assert main([server, "--log", str(server_log)]) == 0, capsys.readouterr().out
    assert capsys.readouterr().out.strip() == f"contract: {server} keeps the contract"


def test_a_traceback_in_the_log_fails_the_check_in_one_line(server, tmp_path, capsys):
    log = tmp_path / "serve.log"
    log.write_text("started\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
                   "    import scipy\nModuleNotFoundError: No module named 'scipy'\nnext\n")
    assert main([server, "--log", str(log)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [f"contract: {log}:2: a Traceback in the server's log: "
                     "ModuleNotFoundError: No module named 'scipy'",
                     f"contract: FAILED: 1 failure(s) at {server}"]


def test_a_service_that_is_not_there_is_one_line(capsys):
    url = f"http://127.0.0.1:{free_port()}"
    assert main([url]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"python -m loadtest.contract_check: error: cannot reach {url}")
    assert len(error.splitlines()) == 1
