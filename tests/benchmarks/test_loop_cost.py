"""The per-thread CPU reading that benchmarks.loop_cost divides by the answers."""

import os
import threading
import time

from benchmarks.loop_cost import thread_cpu_seconds


def spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_the_main_thread_and_the_others_are_counted_apart():
    main_before, others_before = thread_cpu_seconds(os.getpid())
    spin(0.3)
    main_after, others_after = thread_cpu_seconds(os.getpid())
    assert main_after - main_before >= 0.2
    assert others_after - others_before < 0.1


def test_a_running_thread_counts_among_the_others():
    ready, done = threading.Event(), threading.Event()

    def work() -> None:
        spin(0.3)
        ready.set()
        done.wait()

    worker = threading.Thread(target=work)
    _, others_before = thread_cpu_seconds(os.getpid())
    worker.start()
    ready.wait()
    _, others_after = thread_cpu_seconds(os.getpid())
    done.set()
    worker.join()
    assert others_after - others_before >= 0.2
