"""The fanout consumer as a Python shop would write it: the peer of figure 3 in BENCHMARKS.md.

Powertools for AWS Lambda's BatchProcessor (partial batch responses), an idempotency check in
a dict, and one requests.Session for keep-alive. Same classification as the Rust consumer:
2xx succeeded; 408, 429, 5xx and connection errors go back to SQS; other statuses are final.
Left out, as in the benchmark's Rust run: DLQ sends (nothing fails permanently here) and rate
limits (none are configured).
"""
import json

import requests
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

processor = BatchProcessor(event_type=EventType.SQS)
session = requests.Session()
# message_id -> "IN_PROGRESS" | "COMPLETED" | "REJECTED"; lives as long as the instance.
idempotency = {}


class TransientError(Exception):
    """The call may succeed later: the record goes back to SQS."""


def decode(body):
    """A job from a raw SQS body or an SNS envelope around it."""
    message = json.loads(body)
    if message.get("Type") == "Notification" and "Message" in message:
        message = json.loads(message["Message"])
    return message


def record_handler(record: SQSRecord):
    job = decode(record.body)
    message_id = job["message_id"]
    if idempotency.get(message_id) in ("COMPLETED", "REJECTED"):
        return "duplicate"
    idempotency[message_id] = "IN_PROGRESS"
    target = job["target"]
    headers = dict(target.get("headers") or {})
    headers["Idempotency-Key"] = message_id
    try:
        response = session.request(
            target["method"],
            target["url"],
            headers=headers,
            json=target.get("body"),
            timeout=target["timeout_ms"] / 1000,
        )
    except requests.RequestException as e:
        del idempotency[message_id]
        raise TransientError(str(e)) from e
    status = response.status_code
    if 200 <= status < 300:
        idempotency[message_id] = "COMPLETED"
        return "succeeded"
    if status in (408, 429) or status >= 500:
        del idempotency[message_id]
        raise TransientError(f"HTTP {status}")
    idempotency[message_id] = "REJECTED"
    return f"rejected: HTTP {status}"


def lambda_handler(event, context):
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
