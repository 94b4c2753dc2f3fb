"""uq-evaluate --drift-replay: the test split, then a shifted set, streamed through the
drift detector the service runs, one prediction at a time.

The detector (uncertainty.drift) is built from the card's references as the
service builds it; the stream is the test split's predictions at the card's
default N, in the split's order, followed by the shifted set's (upscaled digits for
28 x 28 data, else the first shifted set). Reported: the alarms raised on the test
split (false alarms), the predictions into the shifted set until the alarm came
on, and the plot drift_replay.png.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from training.plots import drift_replay_plot
from uncertainty.drift import DriftDetector
from uncertainty.risk import risk_scores

PREFERRED_SHIFT = "upscaled_digits"


def replay(card: Any, test_summary: Any, shifted_summaries: dict[str, Any], output_dir: Path,
           seed: int) -> dict[str, Any]:
    """Stream ``test_summary`` then a shifted set's summary (name -> summary, at the
    default N) through a detector of ``card``'s references; writes the plot."""

    references = {c.n_samples: c.reference for c in card.calibrations if c.reference}
    if not references:
        raise ValueError("the card holds no reference of the uncertainty scores: recalibrate "
                         "with uq-calibrate")
    name = PREFERRED_SHIFT if PREFERRED_SHIFT in shifted_summaries else next(
        iter(shifted_summaries))
    detector = DriftDetector(references, seed=seed)
    n_samples = card.default_n_samples
    parts = [detector.update(np.full(len(summary.label), n_samples), risk_scores(summary))
             for summary in (test_summary, shifted_summaries[name])]
    statistics = {score: np.concatenate([part.statistics[score] for part in parts])
                  for score in parts[0].statistics}
    alarm = np.concatenate([part.alarm for part in parts])
    test_rows = len(test_summary.label)
    in_test, in_shift = alarm[:test_rows], parts[1].alarm
    drift_replay_plot(statistics, alarm, test_rows, detector.threshold,
                      output_dir / "drift_replay.png",
                      title=f"Drift replay: test split, then {name} (N={n_samples})")
    return {
        "n_samples": n_samples,
        "shifted_set": name,
        "test_rows": test_rows,
        "shifted_rows": len(in_shift),
        "window": detector.window,
        "threshold": detector.threshold,
        "false_alarms": int(np.sum(in_test & ~np.concatenate([[False], in_test[:-1]]))),
        "largest_statistic_on_test": float(max(np.nanmax(values[:test_rows])
                                               for values in statistics.values())),
        "detection_delay": int(np.argmax(in_shift)) + 1 if in_shift.any() else None,
    }
