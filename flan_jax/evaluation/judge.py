"""A judge: a language model that answers batches of judging requests, behind a disk cache.

A request is a prompt string or a list of chat messages ({"role", "content"}); a judge
returns one completion per request (`Judge.complete`). Two kinds:

- `EndpointJudge`: an OpenAI-compatible server's `/v1/chat/completions` (vLLM, TGI,
  llama.cpp, OpenAI itself), at temperature 0, with a few requests in flight at once.
  A string request is sent as one user message.
- `CheckpointJudge`: any model flan_jax loads, through a `flan_jax.inference.Predictor`
  (or anything with its `generate(texts)` / `chat(conversations)`), batched as the
  predictor batches. Chat messages go through the predictor's chat template when it has
  one; without one they are joined into one plain prompt.

The cache keeps one JSON file per request, named by the SHA-256 of (the judge's identity,
the request), so a rerun of the same judging (same judge, same prompts) asks nothing, and
a changed prompt or another judge asks again. Files are written atomically (a temporary
file renamed into place), so an interrupted run leaves only whole entries. Each file also
holds the request and the completion, readable as they are.
"""

import concurrent.futures
import hashlib
import http.client
import json
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from typing import Mapping, Sequence, Union

from flan_jax.errors import UserError

Messages = Sequence[Mapping[str, str]]
Request = Union[str, Messages]
_TRANSIENT = (429, 500, 502, 503, 504)


def as_messages(request: Request) -> list[dict]:
  """A request as chat messages: a string becomes one user message."""
  if isinstance(request, str):
    return [{"role": "user", "content": request}]
  return [{"role": m["role"], "content": m["content"]} for m in request]


def as_text(request: Request) -> str:
  """A request as one plain prompt: the messages' contents, a blank line apart."""
  if isinstance(request, str):
    return request
  return "\n\n".join(m["content"] for m in request)


class JudgeCache:
  """Completions on disk under `directory`, one JSON file per (judge, request)."""

  def __init__(self, directory: str):
    self.directory = directory

  @staticmethod
  def key(identity: str, request: Request) -> str:
    content = json.dumps([identity, as_messages(request)], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(content.encode("utf-8")).hexdigest()

  def _path(self, key: str) -> str:
    return os.path.join(self.directory, key[:2], key + ".json")

  def get(self, identity: str, request: Request) -> str | None:
    path = self._path(self.key(identity, request))
    try:
      with open(path, encoding="utf-8") as f:
        return json.load(f)["completion"]
    except FileNotFoundError:
      return None
    except (json.JSONDecodeError, KeyError, TypeError):
      return None  # not written by us (writes are atomic): ask again, which overwrites it

  def put(self, identity: str, request: Request, completion: str) -> None:
    path = self._path(self.key(identity, request))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    entry = {"judge": identity, "request": as_messages(request), "completion": completion}
    descriptor, temporary = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    try:
      with os.fdopen(descriptor, "w", encoding="utf-8") as f:
        json.dump(entry, f, ensure_ascii=False)
      os.replace(temporary, path)
    except BaseException:
      if os.path.exists(temporary):
        os.remove(temporary)
      raise


class Judge:
  """Completes requests, consulting the cache first. Subclasses define `identity` (what
  makes two judges give different answers) and `_complete` (one batch, uncached)."""
  identity: str = "judge"

  def __init__(self, cache_dir: str | None = None, batch_size: int = 8):
    self.cache = JudgeCache(cache_dir) if cache_dir else None
    self.batch_size = batch_size
    self.requests_made = 0  # requests that reached the model (cache misses)

  def complete(self, requests: Sequence[Request]) -> list[str]:
    """One completion per request, in order. A request asked twice in one call, or
    found in the cache, reaches the model at most once."""
    keys = [JudgeCache.key(self.identity, request) for request in requests]
    known: dict[str, str] = {}
    missing: dict[str, Request] = {}
    for key, request in zip(keys, requests):
      if key in known or key in missing:
        continue
      cached = self.cache.get(self.identity, request) if self.cache else None
      if cached is None:
        missing[key] = request
      else:
        known[key] = cached
    pending = list(missing.items())
    for start in range(0, len(pending), self.batch_size):
      batch = pending[start:start + self.batch_size]
      answers = self._complete([request for _, request in batch])
      self.requests_made += len(batch)
      for (key, request), answer in zip(batch, answers):
        known[key] = answer
        if self.cache:  # batch by batch, so an interrupted run keeps what it paid for
          self.cache.put(self.identity, request, answer)
      logging.info("Judge: %d of %d requests answered (%d more from the cache).",
                   start + len(batch), len(pending), len(known) - start - len(batch))
    return [known[key] for key in keys]

  def _complete(self, requests: Sequence[Request]) -> list[str]:
    raise NotImplementedError


class EndpointJudge(Judge):
  """A model behind an OpenAI-compatible HTTP server.

  `url`: the server's base (`http://host:8000` or `.../v1`) or the full
  `.../chat/completions` address. `api_key` defaults to $OPENAI_API_KEY (sent as a
  bearer token when set). `concurrency` requests of a batch are in flight at once. A
  refused connection, a timeout, HTTP 429 or 5xx is tried again `retries` times, waiting
  `retry_wait` seconds, then twice that, ...; any other failure is an error at once.
  """

  def __init__(self, url: str, model: str, *, cache_dir: str | None = None,
               max_tokens: int = 1024, timeout: float = 120.0, concurrency: int = 4,
               batch_size: int = 16, api_key: str | None = None, retries: int = 2,
               retry_wait: float = 1.0, temperature: float = 0,
               flag_names: tuple[str, str] = ("--judge_endpoint", "--judge_model")):
    super().__init__(cache_dir, batch_size)
    # The settings' names in messages: the judge's flags, or a teacher's (self_instruct).
    self.url_flag, self.model_flag = flag_names
    if not url.startswith(("http://", "https://")):
      raise UserError(f"{self.url_flag}={url!r} is not an http(s) URL; give the server's "
                      "address, e.g. http://localhost:8000/v1.")
    if not model:
      raise UserError(f"{self.url_flag} needs {self.model_flag}=NAME (the model the server "
                      "serves).")
    self.url = chat_completions_url(url)
    self.model = model
    self.max_tokens = max_tokens
    self.temperature = temperature or 0  # 0, not 0.0: the identity of existing caches
    self.timeout = timeout
    self.concurrency = concurrency
    self.retries, self.retry_wait = retries, retry_wait
    self.api_key = os.environ.get("OPENAI_API_KEY") if api_key is None else api_key
    self.identity = json.dumps({"endpoint": self.url, "model": model,
                                "temperature": self.temperature,
                                "max_tokens": max_tokens})

  def _complete(self, requests: Sequence[Request]) -> list[str]:
    with concurrent.futures.ThreadPoolExecutor(self.concurrency) as pool:
      return list(pool.map(self._ask, requests))

  def _ask(self, request: Request) -> str:
    body = json.dumps({"model": self.model, "messages": as_messages(request),
                       "temperature": self.temperature,
                       "max_tokens": self.max_tokens}).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    if self.api_key:
      headers["Authorization"] = f"Bearer {self.api_key}"
    for attempt in range(self.retries + 1):
      post = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
      try:
        with urllib.request.urlopen(post, timeout=self.timeout) as response:
          raw = response.read()
        break
      except urllib.error.HTTPError as e:
        # A busy or briefly failing server (rate limit, overload) is worth asking again.
        if e.code in _TRANSIENT and attempt < self.retries:
          time.sleep(self.retry_wait * 2**attempt)
          continue
        detail = e.read(300).decode("utf-8", "replace")
        raise UserError(f"The judge endpoint {self.url} answered HTTP {e.code} ({e.reason}): "
                        f"{detail!r}. Check {self.url_flag} and {self.model_flag}.") from None
      except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        if attempt < self.retries:
          time.sleep(self.retry_wait * 2**attempt)
          continue
        reason = getattr(e, "reason", e)
        raise UserError(f"The judge endpoint {self.url} could not be reached ({reason}) after "
                        f"{self.retries + 1} tries; is the server running, and is "
                        f"{self.url_flag} its address?") from None
    try:
      reply = json.loads(raw)
      content = reply["choices"][0]["message"]["content"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError):
      raise UserError(f"The judge endpoint {self.url} did not answer with an OpenAI chat "
                      f"completion (choices[0].message.content): {raw[:200]!r}.") from None
    return content if isinstance(content, str) else ""


def chat_completions_url(url: str) -> str:
  """The chat completions address of an OpenAI-compatible server given its base URL."""
  url = url.rstrip("/")
  if url.endswith("/chat/completions"):
    return url
  if not url.endswith("/v1"):
    url += "/v1"
  return url + "/chat/completions"


class CheckpointJudge(Judge):
  """A local model as the judge, through a Predictor (`flan_jax.inference`).

  `name` identifies the judge in the cache: the checkpoint's path, plus whatever changes
  its answers (decoding settings), so another checkpoint never reads this one's cache.
  """

  def __init__(self, predictor, name: str, *, cache_dir: str | None = None,
               batch_size: int | None = None):
    super().__init__(cache_dir, batch_size or getattr(predictor, "batch_size", 8))
    self.predictor = predictor
    decode = getattr(predictor, "decode", None)
    template = getattr(predictor, "chat_template", None)
    self.identity = json.dumps({
        "checkpoint": name, "max_new_tokens": getattr(predictor, "max_new_tokens", None),
        "max_input_length": getattr(predictor, "max_input_length", None),
        "decode": None if decode is None else repr(decode),
        "chat_template": None if template is None else
                         hashlib.sha256(repr(template).encode()).hexdigest()[:16]})

  def _complete(self, requests: Sequence[Request]) -> list[str]:
    if getattr(self.predictor, "chat_template", None) is not None:
      return self.predictor.chat([as_messages(r) for r in requests])
    return self.predictor.generate([as_text(r) for r in requests])


def write_judgements(path: str, rows: Sequence[Mapping]) -> None:
  """One JSON line per judged item, for reading what the judge saw and said."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
