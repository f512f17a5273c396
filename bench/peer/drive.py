"""Replays an events file (one SQS event per line) through handler.lambda_handler, one
invocation after another, as one Lambda instance would; prints the same JSON stats as
`fanout-bench replay`.

Usage: python drive.py EVENTS.jsonl
"""
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import handler  # noqa: E402  (the path above makes the peer importable from anywhere)


class Context:
    """The parts of the Lambda context the handler may read."""

    function_name = "fanout-consumer-peer"
    aws_request_id = "bench"

    def get_remaining_time_in_millis(self):
        return 60_000


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_kb():
    """VmHWM, as fanout-bench reads it (getrusage's ru_maxrss carries the parent's peak over)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def main(path):
    context = Context()
    records = failures = 0
    cpu, started = cpu_seconds(), time.perf_counter()
    with open(path) as events:
        for line in events:
            event = json.loads(line)
            records += len(event["Records"])
            failures += len(handler.lambda_handler(event, context)["batchItemFailures"])
    wall = time.perf_counter() - started
    print(json.dumps({
        "jobs": records,
        "records": records,
        "wall_s": wall,
        "cpu_s": cpu_seconds() - cpu,
        "max_rss_kb": peak_rss_kb(),
        "not_succeeded": failures,
    }))


if __name__ == "__main__":
    main(sys.argv[1])
