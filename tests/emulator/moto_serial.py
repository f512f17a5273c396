"""moto's server, applying one request at a time (SQS long polls aside).

moto's DynamoDB applies a conditional write as check-then-act with no lock, and `moto_server`
serves requests on many threads: two racing conditional writes can then both pass, which real
DynamoDB never allows. Applying requests one at a time restores the per-item atomicity the
idempotency store relies on, so the race tests test our code, not the emulator's threading.

An SQS long poll (ReceiveMessage with a wait) is the exception: under the lock, one idle
consumer's 1 s poll would stall every other client's calls for that second, which real SQS
never does. Long polls run beside the lock (moto's SQS guards its queues itself).

Usage: python moto_serial.py HOST PORT
"""
import os
import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.server import MotoRequestHandler
from werkzeug.serving import run_simple

host, port = sys.argv[1], int(sys.argv[2])
os.environ.setdefault("MOTO_PORT", str(port))

app = DomainDispatcherApplication(create_backend_app)
one_at_a_time = threading.Lock()


def serial(environ, start_response):
    if environ.get("HTTP_X_AMZ_TARGET") == "AmazonSQS.ReceiveMessage":
        return app(environ, start_response)
    with one_at_a_time:
        # Drain the response under the lock: a WSGI app may do its work lazily.
        return list(app(environ, start_response))


run_simple(host, port, serial, threaded=True, request_handler=MotoRequestHandler)
