"""/metrics of a worker group: the workers' figures summed series by series (the group itself,
end to end, is in test_workers.py)."""

from __future__ import annotations

from fastapi_server.group_metrics import GroupMetrics, merge
from lang_agent.capture.metrics import Histogram, family_lines, histogram_lines


def worker_text(calls: dict[str, int], latencies: list[float], in_flight: int) -> str:
    histogram = Histogram((0.5, 1.0))
    for value in latencies:
        histogram.observe((("model", "m"),), value=value)
    by_model = {(("model", model),): count for model, count in calls.items()}
    lines = [
        *family_lines("calls_total", "counter", "Calls.", by_model),
        *histogram_lines("latency_seconds", "Latency.", histogram),
        *family_lines("in_flight", "gauge", "Now.", {(): in_flight}),
    ]
    return "\n".join(lines) + "\n"


def test_the_workers_figures_are_summed_and_each_family_stays_together():
    first = worker_text({"qwen": 3}, [0.2, 0.7], in_flight=1)
    second = worker_text({"qwen": 2, "kimi": 4}, [0.9, 1.5], in_flight=2)
    lines = merge([first, second]).splitlines()
    assert lines == [
        "# HELP calls_total Calls.",
        "# TYPE calls_total counter",
        'calls_total{model="qwen"} 5',
        'calls_total{model="kimi"} 4',  # only the second worker had it: still in its family
        "# HELP latency_seconds Latency.",
        "# TYPE latency_seconds histogram",
        'latency_seconds_bucket{model="m",le="0.5"} 1',
        'latency_seconds_bucket{model="m",le="1"} 3',
        'latency_seconds_bucket{model="m",le="+Inf"} 4',
        'latency_seconds_sum{model="m"} 3.3',
        'latency_seconds_count{model="m"} 4',
        "# HELP in_flight Now.",
        "# TYPE in_flight gauge",
        "in_flight 3",
    ]


def test_one_text_comes_back_as_it_was():
    text = worker_text({"qwen": 1}, [0.1], in_flight=0)
    assert merge([text]) == text


def test_a_scrape_publishes_its_own_figures_and_reads_every_workers(tmp_path):
    counts = {0: 1, 1: 10}
    workers = [
        GroupMetrics(tmp_path, n, lambda n=n: worker_text({"q": counts[n]}, [], 0)) for n in (0, 1)
    ]
    workers[1].publish()
    assert 'calls_total{model="q"} 11' in workers[0].collect()
    counts[0] = 2  # the scraped worker's own figures are fresh, the others' as last published
    counts[1] = 20
    assert 'calls_total{model="q"} 12' in workers[0].collect()
    assert 'calls_total{model="q"} 22' in workers[1].collect()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["worker-0.prom", "worker-1.prom"]
