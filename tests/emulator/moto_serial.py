"""moto's server, applying one request at a time (SQS long polls aside).

moto's DynamoDB applies a conditional write as check-then-act with no lock, and `moto_server`
serves requests on many threads: two racing conditional writes can then both pass, which real
DynamoDB never allows. Applying requests one at a time restores the per-item atomicity the
idempotency store relies on, so the race tests test our code, not the emulator's threading.

An SQS long poll (ReceiveMessage with a wait) must not hold the lock while it waits: one idle
consumer's 1 s poll would stall every other client's calls for that second, which real SQS never
does. So a long poll is served as short polls, each under the lock, with the lock released in
between, until a message comes or the wait is over.

Usage: python moto_serial.py HOST PORT
"""
import io
import json
import os
import sys
import threading
import time

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.server import MotoRequestHandler
from werkzeug.serving import run_simple

host, port = sys.argv[1], int(sys.argv[2])
os.environ.setdefault("MOTO_PORT", str(port))

app = DomainDispatcherApplication(create_backend_app)
one_at_a_time = threading.Lock()


def call(environ, body):
    """One request under the lock: (status, headers, body bytes)."""
    environ = dict(environ)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    answer = {}

    def start_response(status, headers, exc_info=None):
        answer["status"], answer["headers"] = status, headers
        return lambda _data: None

    with one_at_a_time:
        # Drain the response under the lock: a WSGI app may do its work lazily.
        chunks = list(app(environ, start_response))
    return answer["status"], answer["headers"], b"".join(chunks)


def serial(environ, start_response):
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    wait = 0.0
    if environ.get("HTTP_X_AMZ_TARGET") == "AmazonSQS.ReceiveMessage":
        request = json.loads(body or b"{}")
        wait = float(request.get("WaitTimeSeconds") or 0)
        if wait > 0:
            request["WaitTimeSeconds"] = 0
            body = json.dumps(request).encode()
    until = time.monotonic() + wait
    while True:
        status, headers, content = call(environ, body)
        if wait <= 0 or time.monotonic() >= until or not status.startswith("200"):
            break
        if json.loads(content or b"{}").get("Messages"):
            break
        time.sleep(0.05)
    start_response(status, headers)
    return [content]


run_simple(host, port, serial, threaded=True, request_handler=MotoRequestHandler)
