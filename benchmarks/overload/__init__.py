"""Overload and latency budgets: capacity, 3x overload and recovery, big
requests beside small ones, and requests that carry a latency budget, through HTTP.

    python -m benchmarks.overload --serve --model uq-classifier:latest \\
        --output benchmarks/results/overload.json
    python -m benchmarks.overload --host http://127.0.0.1:3000 --phases capacity,budget \\
        --capacity-seconds 5

Against a real ``bentoml serve`` on loopback (``--serve``) or a running one (``--host``),
after a short warm-up of every path the chosen phases use:

1. capacity: C closed-loop clients (``--clients``) for D seconds (``--capacity-seconds``)
   on /predict_batched, one image per request at N (``--n-samples``): the 200 answers
   per second are the capacity;
2. overload: open-loop arrivals at ``--overload`` x capacity for ``--overload-seconds``,
   then 0.5 x capacity for ``--recovery-seconds``. Requests leave at fixed times on a
   pool of keep-alive connections that grows as needed up to 1024, and each is timed
   from its scheduled time (no coordinated omission); "late" counts those written more
   than 10 ms after it (the send lag: the time a request waited for a connection).
   Recovery: the first request after the overload must get a 200 within
   UQ_BATCH_MAX_LATENCY_MS, and the p99 of the 200s in 1 s windows (by send time)
   must be back within 1.5x the capacity phase's p99, and stay there, within 5 s;
3. big: 4 clients posting one image at N to /predict, first alone (the idle p99) and
   then for as long beside 2 clients posting 64 images x 1000 samples each (a big
   client refused with 429 waits its Retry-After; the others resend at once);
4. budget: C clients on /predict_batched with ``latency_budget_ms`` 50 and no
   n_samples: the share answered 200, the share of 200s within 50 ms as this client
   measured them, and the N the service picked.

Closed-loop clients send their next request as soon as an answer comes, a 429 too
(but the big ones); the load's answers still out 30 s after its end count as
"no_answer", and open-loop requests still waiting for a connection then as "not_sent".

The server worker's RSS (the largest process of the server's tree) is read after the
warm-up and after the last phase, and this client's own CPU use is reported per phase
(in cores, of the 2 it shares with the server). Writes ``--output`` (JSON), a Markdown
summary and a PNG of answers, statuses and p99 per second beside it, and prints the
targets with PASS or FAIL. Clients are asyncio coroutines speaking raw HTTP/1.1 on the
server's 2 cores: the numbers include their (small) CPU use.
"""
