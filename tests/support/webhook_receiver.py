"""A webhook receiver for the tests: verifies every request with the Standard Webhooks reference
library (not with vtx's code), answers 500 to the first FAIL_FIRST requests (or to all, with
FAIL_FIRST=-1), and appends each verified request to OUT as one JSON line. The first HOLD_FIRST
requests are held HOLD_SECS and then answered 500, after a line with "held": true, so that a test
can kill the sender while a delivery is in flight.

Listens on PORT (any free port when unset) and prints it, then serves until killed."""

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook

SECRET = os.environ["SECRET"]
FAIL_FIRST = int(os.environ.get("FAIL_FIRST", "0"))
OUT = os.environ["OUT"]
HOLD_FIRST = int(os.environ.get("HOLD_FIRST", "0"))
HOLD_SECS = float(os.environ.get("HOLD_SECS", "0"))
lock = threading.Lock()
seen = {"requests": 0}


def record(line):
    """Appends one JSON line to OUT (the caller holds the lock)."""
    with open(OUT, "a") as f:
        f.write(json.dumps(line) + "\n")


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            Webhook(SECRET).verify(body, headers)
            verified = True
        except Exception as e:  # noqa: BLE001 - any failure is a bad signature to the test
            verified = False
            print(f"verification failed: {e}", file=sys.stderr)
        with lock:
            seen["requests"] += 1
            n = seen["requests"]
            hold = n <= HOLD_FIRST
            fail = FAIL_FIRST < 0 or n <= FAIL_FIRST or hold
            event = json.loads(body) if verified else {}
            about = {
                "n": n,
                "id": headers.get("webhook-id"),
                "type": event.get("type"),
                "video_id": (event.get("data") or {}).get("id"),
            }
            if hold:
                record({**about, "held": True})
        if hold:
            time.sleep(HOLD_SECS)
        with lock:
            record({
                **about,
                "verified": verified,
                "live_tier": (event.get("data") or {}).get("live_tier"),
                "answered": 500 if fail or not verified else 204,
            })
        try:
            self.send_response(500 if fail or not verified else 204)
            self.end_headers()
        except OSError:
            pass  # the sender is gone (killed mid-delivery)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "0"))), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
