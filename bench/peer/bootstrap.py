"""A minimal Lambda runtime for the peer's cold-start figure: import the handler (init), then
serve invocations from the Runtime API at $AWS_LAMBDA_RUNTIME_API, as the managed Python
runtime does (without its own extra start-up work, so the peer's figure is a lower bound).
"""
import json
import os
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import handler  # noqa: E402


class Context:
    """The parts of the Lambda context the handler may read."""

    def __init__(self, request_id, deadline_ms, function_arn):
        self.aws_request_id = request_id
        self.invoked_function_arn = function_arn
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "fanout-consumer-peer")
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self):
        import time
        return max(0, self._deadline_ms - int(time.time() * 1000))


def main():
    base = f"http://{os.environ['AWS_LAMBDA_RUNTIME_API']}/2018-06-01/runtime/invocation"
    while True:
        with urllib.request.urlopen(f"{base}/next") as response:
            request_id = response.headers["Lambda-Runtime-Aws-Request-Id"]
            deadline_ms = int(response.headers["Lambda-Runtime-Deadline-Ms"])
            arn = response.headers.get("Lambda-Runtime-Invoked-Function-Arn", "")
            event = json.loads(response.read())
        result = handler.lambda_handler(event, Context(request_id, deadline_ms, arn))
        answer = urllib.request.Request(f"{base}/{request_id}/response", data=json.dumps(result).encode(), method="POST")
        urllib.request.urlopen(answer).close()


if __name__ == "__main__":
    main()
