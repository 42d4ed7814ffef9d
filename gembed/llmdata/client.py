"""A client for OpenAI-compatible chat/completions endpoints (vLLM, llama.cpp's server, Ollama,
Gemini's compatibility endpoint), built for batch data work:

- a bounded number of concurrent requests (a thread pool: the work is waiting on the network);
- retries with exponential backoff and jitter on 429, 5xx, timeouts and refused connections,
  honouring `Retry-After`;
- a content-addressed cache of every good response (`ResponseCache`), so that a rerun after a
  crash sends only the requests that never got an answer, and the stage is reproducible;
- a response the caller's parser rejects (malformed) is asked for again, then reported as a
  failure for that item: it never aborts the job.

The API key is read from an environment variable and used only in the Authorization header; it is
not part of the cache key, and every error message is scrubbed of it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import http.client
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Sequence

from gembed.llmdata.cache import ResponseCache, request_key
from gembed.progress import progress_bar

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class MalformedResponse(ValueError):
  """The endpoint answered, but not with what the prompt asked for."""


class EndpointError(ValueError):
  """The endpoint refuses every request (bad key, URL or model): stop instead of failing each
  item. Answers already cached stay cached."""


FATAL_STATUS = frozenset({401, 403, 404})


@dataclasses.dataclass(frozen=True)
class LLMConfig:
  base_url: str  # e.g. http://localhost:8000/v1 (the path before /chat/completions)
  model: str
  api_key_env: str = "OPENAI_API_KEY"  # the *name* of the variable; unset = no Authorization
  cache_dir: str = ""  # local folder, shared filesystem, or gs:// (tf.io.gfile); "" = no cache
  concurrency: int = 8
  timeout_s: float = 60.0
  max_retries: int = 6  # transport retries (429/5xx/timeouts) per request
  malformed_retries: int = 2  # extra asks when the parser rejects an answer
  backoff_s: float = 1.0  # first backoff; doubles per attempt, with jitter
  max_backoff_s: float = 60.0
  temperature: float = 0.0
  max_tokens: int = 256


@dataclasses.dataclass
class Result:
  """One item's outcome: `value` (what the parser returned) or `error` (why it failed)."""

  value: Any = None
  error: str | None = None
  cached: bool = False

  @property
  def ok(self) -> bool:
    return self.error is None


class LLMClient:
  """Chat completions with concurrency, retries, a response cache and per-item failures."""

  def __init__(self, config: LLMConfig, progress: bool = True):
    if not config.base_url.startswith(("http://", "https://")):
      raise ValueError(f"--llm-base-url {config.base_url!r}: expected http(s)://host[:port]/v1")
    self.config = config
    self._url = config.base_url.rstrip("/") + "/chat/completions"
    self._api_key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
    self.cache = ResponseCache(config.cache_dir) if config.cache_dir else None
    self.progress = progress
    self._lock = threading.Lock()
    self.stats = {"requests": 0, "cache_hits": 0, "retries": 0, "malformed": 0, "failures": 0}

  def body(self, messages: Sequence[dict], **overrides) -> dict:
    """The request body; together with the model it is the cache key (never the URL or key)."""
    body = {"model": self.config.model, "messages": list(messages),
            "temperature": self.config.temperature, "max_tokens": self.config.max_tokens}
    body.update(overrides)
    return body

  def complete(self, messages: Sequence[dict], parse: Callable[[str], Any], **overrides) -> Result:
    """One chat completion, parsed; cached when the parser accepts it."""
    body = self.body(messages, **overrides)
    key = request_key(body)
    if self.cache is not None:
      content = self.cache.get(key)
      if content is not None:
        try:
          value = parse(content)
        except MalformedResponse:  # the parser changed since: ask again
          pass
        else:
          self._count("cache_hits")
          return Result(value, cached=True)
    error = None
    for _ in range(1 + self.config.malformed_retries):
      try:
        content = self._post(body)
        value = parse(content)
      except _TransportError as e:
        error = str(e)
        break
      except MalformedResponse as e:
        self._count("malformed")
        error = f"malformed response: {e}"
        continue
      if self.cache is not None:
        self.cache.put(key, body, content)
      return Result(value)
    self._count("failures")
    return Result(error=self._scrub(error))

  def map(self, requests: Sequence[tuple], desc: str = "LLM requests") -> list[Result]:
    """Runs (messages, parse[, body overrides]) requests concurrently; results in input order.
    Identical requests are sent once."""
    unique: dict[str, int] = {}
    owner = [unique.setdefault(request_key(self.body(r[0], **(r[2] if len(r) > 2 else {}))),
                               i) for i, r in enumerate(requests)]
    results: dict[int, Result] = {}
    bar = progress_bar(len(unique), self.progress, desc, unit="req")
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, self.config.concurrency))
    try:
      futures = {pool.submit(self.complete, requests[i][0], requests[i][1],
                             **(requests[i][2] if len(requests[i]) > 2 else {})): i
                 for i in unique.values()}
      for future in concurrent.futures.as_completed(futures):
        results[futures[future]] = future.result()  # EndpointError stops the whole map
        bar.update(1)
    finally:
      pool.shutdown(wait=True, cancel_futures=True)
      bar.close()
    return [results[i] for i in owner]

  def _post(self, body: dict) -> str:
    data = json.dumps(body).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    if self._api_key:
      headers["Authorization"] = f"Bearer {self._api_key}"
    last = ""
    for attempt in range(self.config.max_retries + 1):
      if attempt:
        self._count("retries")
      self._count("requests")
      request = urllib.request.Request(self._url, data=data, headers=headers, method="POST")
      retry_after = None
      try:
        with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
          raw = response.read()
        return _content(raw)
      except MalformedResponse:
        raise
      except urllib.error.HTTPError as e:
        detail = e.read()[:200].decode("utf-8", "replace")
        last = f"HTTP {e.code} from {self._url}: {detail}"
        if e.code in FATAL_STATUS:
          raise EndpointError(self._scrub(last)) from None
        if e.code not in RETRYABLE_STATUS:
          raise _TransportError(self._scrub(last)) from None
        retry_after = _retry_after(e.headers.get("Retry-After"))
      except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as e:
        last = f"{type(e).__name__} from {self._url}: {getattr(e, 'reason', e)}"
      if attempt < self.config.max_retries:
        delay = min(self.config.max_backoff_s, self.config.backoff_s * 2 ** attempt)
        delay = retry_after if retry_after is not None else delay * (0.5 + random.random() / 2)
        log.debug("retrying in %.2fs after %s", delay, self._scrub(last))
        time.sleep(delay)
    raise _TransportError(self._scrub(f"gave up after {self.config.max_retries + 1} attempts: {last}"))

  def _scrub(self, text: str | None) -> str | None:
    if text and self._api_key:
      text = text.replace(self._api_key, "***")
    return text

  def _count(self, name: str):
    with self._lock:
      self.stats[name] += 1


class _TransportError(RuntimeError):
  pass


def _content(raw: bytes) -> str:
  """The assistant message of a chat/completions response body."""
  try:
    payload = json.loads(raw)
    content = payload["choices"][0]["message"]["content"]
  except (ValueError, KeyError, IndexError, TypeError):
    raise MalformedResponse(f"not a chat completion: {raw[:80]!r}") from None
  if not isinstance(content, str):
    raise MalformedResponse("message content is not text")
  return content


def _retry_after(value: str | None) -> float | None:
  try:
    return max(0.0, min(float(value), 120.0)) if value else None
  except ValueError:
    return None


def parse_json_object(content: str) -> dict:
  """The first JSON object in a model's answer (models wrap JSON in prose or code fences)."""
  start = content.find("{")
  while start != -1:
    try:
      value, _ = json.JSONDecoder().raw_decode(content[start:])
      if isinstance(value, dict):
        return value
    except ValueError:
      pass
    start = content.find("{", start + 1)
  raise MalformedResponse(f"no JSON object in {content[:80]!r}")
