"""The scheduler (service/scheduler.py) over the test run's real tiny classifier: batching,
slicing, seeds, admission, budgets, fairness and cancellation, on an event loop of its own."""

import asyncio

import bentoml
import numpy as np
import pytest

from service.latency import CostModel
from service.predictor import Predictor
from service.scheduler import SLICE_ROWS, Overloaded, Scheduler, Work, _Ahead
from tests.service.fake_clock import FakeClock
from training.data import load_dataset
from uncertainty.sequential import SequentialRun


@pytest.fixture(scope="module")
def predictor(classifier_tag):
    return Predictor.load(bentoml.models.get(classifier_tag), None, warm_up_batch=4)


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return load_dataset("digits").x_test[:16]  # [16, 8, 8, 1]


def scheduler(predictor, **limits) -> Scheduler:
    options = {"max_rows": 2048, "max_instances": 64, "max_queued_rows": 10**6,
               "max_latency": 60.0, **limits}
    return Scheduler(predictor, **options)


async def until(condition) -> None:
    """Let the event loop run until ``condition()`` holds."""
    while not condition():
        await asyncio.sleep(0)


def run(*coroutines, return_exceptions=False):
    async def together():
        return await asyncio.gather(*coroutines, return_exceptions=return_exceptions)

    return asyncio.run(together())


def probabilities(predictions) -> np.ndarray:
    return np.array([p.probabilities for p in predictions])


def test_concurrent_works_share_rounds_and_keep_their_own_n(predictor, x):
    lane = scheduler(predictor)
    works = [Work(x[:3], 5), Work(x[3:4], 30), Work(x[4:8], 1)]
    results = run(*(lane.run([work]) for work in works))
    for work, [predictions] in zip(works, results, strict=True):
        assert len(predictions) == work.batch
        assert {p.n_samples for p in predictions} == {work.n_samples}
        assert {p.risk.calibrated_n_samples for p in predictions} == {work.n_samples}
    assert lane.queued_rows == 0


def test_a_seeded_work_is_the_same_alone_beside_others_and_as_the_predictor_draws_it(
        predictor, x):
    alone = run(scheduler(predictor).run([Work(x[:4], 20, seed=11)]))[0][0]
    lane = scheduler(predictor)
    beside = run(lane.run([Work(x[4:], 20)]), lane.run([Work(x[:4], 20, seed=11)]),
                 lane.run([Work(x[:2], 7, seed=3)]))[1][0]
    direct = predictor.predict(x[:4], n_samples=20, seed=11)
    np.testing.assert_array_equal(probabilities(alone), probabilities(beside))
    np.testing.assert_array_equal(probabilities(alone), probabilities(direct))


def test_a_big_work_is_sliced_and_its_samples_are_independent(predictor, x):
    n_samples = 2 * SLICE_ROWS + 100  # three slices of one instance each
    work = Work(x[:2], n_samples, seed=5, return_samples=True)
    [[[first, second]]] = run(scheduler(predictor).run([work]))
    again = run(scheduler(predictor).run([Work(x[:2], n_samples, seed=5,
                                               return_samples=True)]))[0][0]
    assert first.n_samples == n_samples and len(first.samples) == n_samples
    assert first.samples == again[0].samples and second.samples == again[1].samples
    samples = np.array(first.samples)  # [n_samples, classes]
    parts = np.array_split(samples, 3)
    assert not np.array_equal(parts[0][:100], parts[1][:100])  # slices draw fresh masks
    np.testing.assert_allclose(first.probabilities, samples.mean(axis=0), rtol=1e-5)


def test_auto_works_report_each_rows_n(predictor, x):
    [[predictions]] = run(scheduler(predictor).run([Work(x[:6], "auto", seed=2)]))
    assert len(predictions) == 6
    assert {p.risk.calibrated_n_samples for p in predictions} == {"auto"}
    assert all(p.n_samples in predictor.auto.schedule for p in predictions)


def test_auto_is_sliced_by_its_first_round_and_priced_at_its_mean_n(predictor, x):
    auto = predictor.auto
    per_slice = SLICE_ROWS // auto.schedule[0]  # the first round's engine call: SLICE_ROWS rows
    work = Work(np.concatenate([x] * (per_slice // len(x) + 1)), "auto")
    lane = scheduler(predictor)
    lane._plan(work, "auto")
    # two slices of nearly equal size, in order
    sizes = [piece.instances for piece in work.slices]
    assert sum(sizes) == len(work.x) and max(sizes) <= per_slice and max(sizes) - min(sizes) <= 1
    assert [piece.start for piece in work.slices] == [0, sizes[0]]
    assert work.slices[0].rows == pytest.approx(sizes[0] * auto.mean_n_samples)
    # its last slice's procedure goes on for the later rounds; a seeded one draws them at once
    assert lane._rounds(work) == 2 + len(auto.schedule) - 1
    seeded = Work(work.x, "auto", seed=1)
    lane._plan(seeded, "auto")
    assert lane._rounds(seeded) == 2


class SettlesNothing:
    """A stopping rule under which every row runs to the cap."""

    def settled(self, samples: np.ndarray) -> np.ndarray:
        return np.zeros(samples.shape[1], dtype=bool)


def auto_lane(predictor, monkeypatch, rule):
    """A scheduler whose "auto" runs stop by ``rule``; the counts of every engine call go
    to ``calls``. Returns (scheduler, calls, the round schedule)."""
    calls = []
    sample_ragged = predictor.engine.sample_ragged

    def counted(rows, counts, *args, **kwargs):
        calls.append(list(counts))
        return sample_ragged(rows, counts, *args, **kwargs)

    schedule = predictor.auto.schedule
    monkeypatch.setattr(predictor.engine, "sample_ragged", counted)
    monkeypatch.setattr(predictor, "auto_run", lambda rows, risk_threshold=None: SequentialRun(
        rows, rule, schedule))
    return scheduler(predictor), calls, schedule


def test_auto_rounds_of_different_works_share_engine_calls(predictor, x, monkeypatch):
    """A work that arrives while another's procedure is under way draws its first round
    in the call that draws the other's next round; each finishes with its own rows."""
    lane, calls, schedule = auto_lane(predictor, monkeypatch, SettlesNothing())
    first, second = Work(x[:3], "auto"), Work(x[3:7], "auto")
    for work in (first, second):
        lane._plan(work, "auto")
    lane._slices_waiting = True  # the second work arrives while the first's round is drawn
    lane._draw([(first, first.slices.pop(0))])
    assert len(calls) == 1 and first.open_runs == 1
    lane._draw([(second, second.slices.pop(0))])
    assert calls[1] == [schedule[1] - schedule[0]] * 3 + [schedule[0]] * 4  # one shared call
    assert not first.done and not second.done
    lane._slices_waiting = False  # nothing waits: the engine thread draws on until an answer
    assert lane._draw([]).finished == [first] and len(calls) == len(schedule)
    assert lane._draw([]).finished == [second] and len(calls) == len(schedule) + 1
    for work in (first, second):
        assert work.done and len(work.predictions) == work.batch
        assert {p.n_samples for p in work.predictions} == {schedule[-1]}
        assert {p.risk.calibrated_n_samples for p in work.predictions} == {"auto"}


class SettlesAllButTheLast:
    """A stopping rule that keeps only the last open row going, to the cap."""

    def settled(self, samples: np.ndarray) -> np.ndarray:
        return np.arange(samples.shape[1]) < samples.shape[1] - 1


def test_an_auto_slice_is_answered_once_its_instances_stop_and_waiting_slices_share_the_next_call(
        predictor, x, monkeypatch):
    """Slices that one round started share a procedure; a slice whose instances have all
    stopped is answered at once, and while another work's slice waits, the engine thread
    hands each round back so that the slice joins the next call."""
    lane, calls, schedule = auto_lane(predictor, monkeypatch, SettlesAllButTheLast())
    early, late, waiting = Work(x[:3], "auto"), Work(x[3:5], "auto"), Work(x[5:6], "auto")
    for work in (early, late, waiting):
        lane._plan(work, "auto")
    lane._slices_waiting = True  # the third work's slice waits for the next round
    drawn = lane._draw([(early, early.slices.pop(0)), (late, late.slices.pop(0))])
    assert drawn.finished == [early] and len(calls) == 1  # one round, handed back
    assert {p.n_samples for p in early.predictions} == {schedule[0]}
    assert lane._draw([(waiting, waiting.slices.pop(0))]).finished == []
    assert calls[1] == [schedule[1] - schedule[0], schedule[0]]  # late's last row, waiting's
    lane._slices_waiting = False
    assert lane._draw([]).finished == [late]  # on at once, until an answer: late's, at the cap
    assert lane._draw([]).finished == [waiting] and len(calls) == len(schedule) + 1
    assert [p.n_samples for p in late.predictions] == [schedule[0], schedule[-1]]


@pytest.mark.parametrize("part", ["engine", "predictions"])
def test_a_fault_fails_the_works_of_its_round_and_the_scheduler_goes_on(
        predictor, x, monkeypatch, part):
    """A fault drawing a round or building its predictions fails the works it would have
    answered, with the error; the next work is served."""
    owner, name = ((predictor.engine, "sample_ragged") if part == "engine"
                   else (predictor, "predictions"))

    def broken(*args, **kwargs):
        raise RuntimeError(f"broken {name}")

    lane = scheduler(predictor)

    async def scenario():
        with monkeypatch.context() as patch:
            patch.setattr(owner, name, broken)
            with pytest.raises(RuntimeError, match=f"broken {name}"):
                await lane.run([Work(x[:2], 5)])
        return await lane.run([Work(x[:3], 5)])

    [[predictions]] = run(scenario())
    assert [p.n_samples for p in predictions] == [5, 5, 5]
    assert lane.queued_rows == 0 and not lane._works


def test_queued_rows_past_the_bound_are_refused_but_an_empty_queue_admits_anything(
        predictor, x):
    lane = scheduler(predictor, max_queued_rows=100)

    async def scenario():
        big = asyncio.ensure_future(lane.run([Work(x, 50)]))  # 800 rows > 100
        await asyncio.sleep(0)
        assert lane.queued_rows > 100
        with pytest.raises(Overloaded) as refused:
            await lane.run([Work(x[:1], 5)])
        return await big, refused.value

    [([predictions], refusal)] = run(scenario())
    assert len(predictions) == len(x)
    assert "UQ_MAX_QUEUED_ROWS=100" in refusal.message and refusal.retry_after > 0


def test_a_budget_picks_the_largest_choice_predicted_to_fit(predictor, x):
    clock = FakeClock()
    lane = scheduler(predictor, clock=clock)
    # before any round, the prior alone prices the work: 10 ms + 1 ms per row
    lane.costs = CostModel(overhead=0.010, per_row=0.001)
    work = Work(x[:1], None, choices=(100, 50, 10, 1), arrived=clock())
    # N=50 is predicted at 60 ms, N=100 at 110: a deadline between them
    work.deadline = work.arrived + 0.061
    [[[prediction]]] = run(lane.run([work]))
    assert work.n_samples == 50 and work.budget_limited
    assert prediction.n_samples == 50


def test_a_budget_that_cannot_be_met_even_at_the_fewest_samples_is_refused(predictor, x):
    clock = FakeClock()
    lane = scheduler(predictor, clock=clock)
    lane.costs = CostModel(overhead=0.010, per_row=0.001)

    def budgeted():
        work = Work(x[:1], None, choices=(10, 5), arrived=clock())
        work.deadline = work.arrived + 0.005
        return work

    async def scenario():
        long = asyncio.ensure_future(lane.run([Work(x, 100, arrived=clock())]))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match=r"latency_budget_ms: 5 ms cannot be met now, "
                                             r"even at 5 samples"):
            await lane.run([budgeted()])
        await long

    run(scenario())
    # an idle engine tries it at the fewest samples: the cost model's price gets tested
    lane.costs = CostModel(overhead=0.010, per_row=0.001)  # the rounds moved the fit
    tried = budgeted()
    [[predictions]] = run(lane.run([tried]))
    assert tried.n_samples == 5 and predictions[0].n_samples == 5
    assert lane.queued_rows == 0


def test_without_a_budget_work_is_refused_for_its_wait_never_for_its_own_engine_time(
        predictor, x):
    clock = FakeClock()
    lane = scheduler(predictor, max_latency=0.05, clock=clock)
    # 10 ms + 1 ms per row: each work of 16 x 100 is 4 slices of 4 instances, 1.64 s of
    # engine time
    lane.costs = CostModel(overhead=0.010, per_row=0.001)
    works = [Work(x, 100, arrived=clock()) for _ in range(6)]
    # the first slices of five fill one round (2000 rows of 2048): they start at once; the
    # sixth's would wait a round (2.01 s)
    results = run(*(lane.run([work]) for work in works), return_exceptions=True)
    assert all(len(predictions) == len(x) for [predictions] in results[:5])
    assert isinstance(results[5], Overloaded)
    assert "cannot start this request within 50 ms (UQ_BATCH_MAX_LATENCY_MS)" in (
        results[5].message)

    async def behind_a_queued_work():
        queued = asyncio.ensure_future(lane.run([Work(x, 100, arrived=clock())]))
        await asyncio.sleep(0)  # admitted, ahead of the next
        with pytest.raises(Overloaded, match="would wait about"):
            await lane.run([Work(x[:1], 1, arrived=clock() - 0.060)])
        await queued

    # what it already waited before the scheduler saw it counts too, when work is ahead
    run(behind_a_queued_work())
    # an idle engine admits it: nothing of the scheduler's would make it wait
    [predictions] = run(lane.run([Work(x[:1], 1, arrived=clock() - 0.060)]))
    assert len(predictions) == 1


def test_a_budget_that_can_no_longer_be_met_is_refused_before_its_round(predictor, x):
    clock = FakeClock()
    lane = scheduler(predictor, clock=clock)
    budgeted = Work(x[:1], 5, deadline=clock() + 0.5, arrived=clock())

    async def scenario():
        long = asyncio.ensure_future(lane.run([Work(x, 100, arrived=clock())]))
        waiting = asyncio.ensure_future(lane.run([budgeted]))
        await asyncio.sleep(0)  # both admitted, no round taken yet
        clock.advance(1.0)  # the loop was busy for a second
        with pytest.raises(Overloaded, match="latency_budget_ms: 500 ms can no longer be met"):
            await waiting
        return await long

    [[predictions]] = run(scenario())
    assert len(predictions) == len(x) and not budgeted.parts


def test_a_one_slice_work_is_priced_beside_the_next_slice_of_each_queued_work(predictor, x):
    lane = scheduler(predictor)
    lane.costs = CostModel(overhead=0.010, per_row=0.001)
    queued = [Work(x, 100), Work(x[:4], 100), Work(x[:1], 7)]  # next slices: 400, 400, 7 rows
    for work in queued:
        lane._plan(work, work.n_samples)
    work = Work(x[:2], 30)
    lane._plan(work, 30)
    # one round (60 + 807 rows of 2048, 2 + 9 instances of 64): 10 ms + 867 ms
    assert lane._predicted_seconds(1, work.remaining_rows, work.batch, _Ahead(queued)) == (
        pytest.approx(0.010 + 0.867))
    # two slices: two of the long work's, one of each other's
    assert lane._predicted_seconds(2, 60, 2, _Ahead(queued)) == pytest.approx(
        2 * 0.010 + (60 + 800 + 400 + 7) * 0.001)


def test_a_round_takes_a_slice_of_each_work_then_fills_with_the_oldest(predictor, x):
    lane = scheduler(predictor)
    first, second = Work(x, 100), Work(x, 100)  # each 4 slices of 4 instances (400 rows)
    for work in (first, second):
        lane._plan(work, work.n_samples)
        lane._works[work] = None
    rounds = [lane._next_round(), lane._next_round()]
    # the first work finishes in the first round, the second in the next: works finish one
    # after another, and their clients' next requests fill the rounds after
    assert [[(work is first, piece.index) for work, piece in pieces] for pieces in rounds] == [
        [(True, 0), (False, 0), (True, 1), (True, 2), (True, 3)],
        [(False, 1), (False, 2), (False, 3)]]
    assert sum(piece.rows for _, piece in rounds[0]) <= lane.max_rows


def test_short_works_do_not_wait_behind_a_long_one(predictor, x):
    lane = scheduler(predictor, max_rows=SLICE_ROWS)
    finished = []

    async def timed(name, work):
        await lane.run([work])
        finished.append(name)

    async def scenario():
        work = Work(x, 200)  # 8 slices of 2 instances
        long = asyncio.ensure_future(timed("long", work))
        await until(lambda: 0 < len(work.slices) < 8)  # its first round is taken
        await asyncio.gather(*(timed(f"short{i}", Work(x[i:i + 1], 8)) for i in range(4)))
        await long

    run(scenario())
    assert finished[-1] == "long"


def test_a_cancelled_work_draws_nothing_more(predictor, x):
    lane = scheduler(predictor)

    work = Work(x, SLICE_ROWS * 4)  # 64 slices

    async def scenario():
        task = asyncio.ensure_future(lane.run([work]))
        await until(lambda: 0 < len(work.slices) < 64)  # its rounds are under way
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await lane.run([Work(x[:1], 5)])  # the next round drops the cancelled work
        return lane.queued_rows, len(lane._works)

    assert run(scenario()) == [(0, 0)]
    assert work.slices  # it was cancelled before its last slice was drawn
