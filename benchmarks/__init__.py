"""Measurements that write results files, each run as ``python -m benchmarks.NAME``.

Every results file records where it comes from (``command``, ``commit``, ``date``,
``machine``: commandline.provenance). The load clients they share live in
benchmarks.load_client, the server's processes as this machine sees them in
benchmarks.server_processes.
"""
