"""An OpenAI-compatible chat/completions server on loopback, scripted per test.

`responder(body, seen)` decides each answer from the request body and how many times this exact
request (same cache key) was seen before, and returns one of:
  ("ok", content)      a chat completion whose message content is `content`
  ("status", code)     an HTTP error (with Retry-After: 0 for 429)
  ("sleep", seconds)   hang for that long before answering (the client times out first)
  ("raw", bytes)       a 200 whose body is not a chat completion
Every request is recorded (path, headers, body) so a test can check what the client sent.
"""

from __future__ import annotations

import collections
import http.server
import json
import threading
import time

from gembed.llmdata.cache import request_key


class FakeLLM:

  def __init__(self, responder):
    self.responder = responder
    self.requests: list[dict] = []
    self.answered_keys: list[str] = []  # keys of requests that got a 200 chat completion
    self._seen = collections.Counter()
    self._lock = threading.Lock()
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def log_message(self, *args):
        pass

      def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length))
        key = request_key(body)
        with server._lock:
          seen = server._seen[key]
          server._seen[key] += 1
          server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                  "key": key})
        kind, value = server.responder(body, seen)
        if kind == "sleep":
          time.sleep(value)
          kind, value = "ok", '{"late": true}'
        try:
          if kind == "status":
            payload = json.dumps({"error": {"message": f"scripted {value}"}}).encode()
            self.send_response(value)
            if value == 429:
              self.send_header("Retry-After", "0")
          elif kind == "raw":
            payload = value
            self.send_response(200)
          else:
            payload = json.dumps({"id": "x", "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": value},
                 "finish_reason": "stop"}]}).encode()
            self.send_response(200)
            with server._lock:
              server.answered_keys.append(key)
          self.send_header("Content-Type", "application/json")
          self.send_header("Content-Length", str(len(payload)))
          self.end_headers()
          self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
          pass  # the client gave up (timeout) first

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.httpd.daemon_threads = True
    self.httpd.block_on_close = False  # a handler still sleeping must not hold up the test
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

  @property
  def base_url(self) -> str:
    return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

  def __enter__(self):
    self.thread.start()
    return self

  def __exit__(self, *exc):
    self.httpd.shutdown()
    self.httpd.server_close()


def user_message(body) -> str:
  return body["messages"][-1]["content"]


def fields(body) -> dict:
  """'Query: ...' / 'Passage: ...' lines of the last user message."""
  out = {}
  for line in user_message(body).split("\n"):
    name, _, value = line.partition(": ")
    if value:
      out[name] = value
  return out
