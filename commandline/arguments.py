"""Argument parsing shared by every command (uq-train, uq-evaluate, uq-calibrate,
uq-loadtest, uq-score, the benchmarks): the one-line error exit and option types."""

from __future__ import annotations

import argparse
import sys


def fail(prog: str, message: str) -> int:
    """Print ``prog: error: message`` to stderr; returns the exit code, 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (and exit code 2), without
    the usage block."""

    def error(self, message: str) -> None:
        self.exit(fail(self.prog, message))


def integers(text: str) -> tuple[int, ...]:
    """An option value like ``1024,512``."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def sample_counts(text: str) -> tuple[int, ...]:
    """MC sample counts like ``1,10,30``: distinct, ascending, each >= 1."""
    counts = tuple(sorted(set(integers(text))))
    if counts[0] < 1:
        raise argparse.ArgumentTypeError(f"sample counts must be >= 1, got {text!r}")
    return counts


def integer_at_least(minimum: int):
    """An option type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


positive_integer = integer_at_least(1)


def number_in(low: float, high: float, unit: str = ""):
    """An option type: a number in ``(low, high]``; ``unit`` follows it in the error."""
    suffix = f" {unit}" if unit else ""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not low < value <= high:
            raise argparse.ArgumentTypeError(
                f"must lie in ({low:g}, {high:g}]{suffix}, got {value:g}")
        return value

    return parse


def open_fraction(text: str) -> float:
    """An option value that must lie strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1), got {value}")
    return value
