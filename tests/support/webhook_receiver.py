"""A webhook receiver for the tests: verifies every request with the Standard Webhooks reference
library (not with vtx's code), answers 500 to the first FAIL_FIRST requests (or to all, with
FAIL_FIRST=-1), and appends each verified request to OUT as one JSON line.

Listens on PORT (any free port when unset) and prints it, then serves until killed."""

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook

SECRET = os.environ["SECRET"]
FAIL_FIRST = int(os.environ.get("FAIL_FIRST", "0"))
OUT = os.environ["OUT"]
lock = threading.Lock()
seen = {"requests": 0}


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
            fail = FAIL_FIRST < 0 or n <= FAIL_FIRST
            event = json.loads(body) if verified else {}
            with open(OUT, "a") as f:
                f.write(json.dumps({
                    "n": n,
                    "verified": verified,
                    "id": headers.get("webhook-id"),
                    "type": event.get("type"),
                    "video_id": (event.get("data") or {}).get("id"),
                    "live_tier": (event.get("data") or {}).get("live_tier"),
                    "answered": 500 if fail or not verified else 204,
                }) + "\n")
        self.send_response(500 if fail or not verified else 204)
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "0"))), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
