"""moto's server, answering one request at a time.

moto's DynamoDB applies a conditional write as check-then-act with no lock, and `moto_server`
serves requests on many threads: two racing conditional writes can then both pass, which real
DynamoDB never allows. Serving requests one at a time restores the per-item atomicity the
idempotency store relies on, so the race tests test our code, not the emulator's threading.

Usage: python moto_serial.py HOST PORT
"""
import os
import sys

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.server import MotoRequestHandler
from werkzeug.serving import run_simple

host, port = sys.argv[1], int(sys.argv[2])
os.environ.setdefault("MOTO_PORT", str(port))
run_simple(host, port, DomainDispatcherApplication(create_backend_app), threaded=False, request_handler=MotoRequestHandler)
