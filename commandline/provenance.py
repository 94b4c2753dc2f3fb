"""Where a measurement comes from: every results file that the docs render records the
command that wrote it, the commit it measured, the date and the machine.

    results = {**provenance(), "rows": [...]}
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def provenance(argv: list[str] | None = None) -> dict[str, str]:
    """``command``, ``commit``, ``date`` and ``machine`` of the measurement this process makes.

    ``argv`` defaults to the process's own; the command is written as it would be typed
    (``python -m benchmarks.x --flag``, or the console script's name)."""
    return {
        "command": command_line(sys.argv if argv is None else argv),
        "commit": commit(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
    }


def command_line(argv: list[str]) -> str:
    program = argv[0] if argv else "python"
    main_module = getattr(sys.modules.get("__main__"), "__spec__", None)
    if program.endswith(".py") and main_module is not None and main_module.name:
        program = f"python -m {main_module.name.removesuffix('.__main__')}"
    else:
        program = Path(program).name
    return " ".join([program, *map(shlex.quote, argv[1:])])


def commit() -> str:
    """The repository's HEAD, with ``-dirty`` when tracked files differ from it; "unknown"
    outside a git checkout (an installed package)."""
    def git(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(REPOSITORY), *arguments],
                              capture_output=True, text=True, check=False)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return "unknown"
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except OSError:
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty else "")


def machine() -> str:
    """CPU model and core count, e.g. ``AMD EPYC 7B13, 2 cores, Linux x86_64``."""
    return (f"{cpu_model()}, {os.cpu_count()} cores, "
            f"{platform.system()} {platform.machine()}")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
