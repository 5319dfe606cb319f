"""`tinyrm serve`: a reward model behind JSON over HTTP, with requests that arrive together batched.

    POST /score       {prompts: [...], responses: [...], domains?: [...]}      -> {rewards: [...]}
    POST /compare     {prompts, responses_a, responses_b, domains?}            -> {p_a: [...]}
    POST /rank        {prompt, candidates: [...], domain?}                     -> {order, scores}   (rank.py)
    POST /get_reward  {query: [...], prompts?: [...]}                          -> {rewards: [...]}
    GET  /health                                                               -> {status: "ok", mode}

/get_reward is OpenRLHF's remote reward model protocol (`--remote_rm_url`; its `serve_rm` reads
`query`, and `prompts` in newer versions): a query is its prompt followed by the response, so with
`prompts` the response is query[len(prompt):] (400 if it does not start with it), without them the
whole query; extra fields (`labels`) are ignored. /score and /get_reward need a pointwise model.

Batching: one worker thread owns the model. Handlers queue their texts and wait; the worker gathers
what arrives within `window_s` (5 ms) and scores it in one `rm.score` / `rm.compare` / `rank_many` call
per kind, handing each request its slice (under load, requests queue while the model runs).

Why the standard library's ThreadingHTTPServer and not an async framework: there is one model and one
worker, so concurrency is only in waiting; a thread per connection costs little at reward-model request
rates and keeps the runtime dependencies as they are. A body over `max_body_bytes` gets 413 unread, a
stalled or trickled body 408, malformed JSON or a missing or mistyped field 400 {"error": msg}; none of
these stop the server.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .rank import rank_many

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 8 << 20
MAX_PAIRWISE_CANDIDATES = 64          # /rank on a pairwise model: 64 candidates are 4032 sequences


class BadRequest(ValueError):
    """The request's fault: answered 400 with its message."""


@dataclass
class Job:
    kind: str                 # "score" | "compare" | "rank"
    args: tuple               # the call's lists (see Batcher._run_kind)
    done: threading.Event = field(default_factory=threading.Event)
    result: object = None
    error: BaseException | None = None


def _or_none(domains: list):
    return domains if any(d is not None for d in domains) else None


class Batcher:
    """One thread that owns the model and runs every gathered batch of jobs (module docstring)."""

    def __init__(self, rm, window_s: float = 0.005):
        self.rm, self.window_s, self.q = rm, window_s, queue.Queue()
        self.calls = 0                                    # model calls so far (tests check the batching)
        self.thread = threading.Thread(target=self._loop, name="tinyrm-model", daemon=True)
        self.thread.start()

    def submit(self, kind: str, *args):
        job = Job(kind, args)
        self.q.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()

    def _loop(self) -> None:
        while (job := self.q.get()) is not None:
            jobs, deadline = [job], time.monotonic() + self.window_s
            while (left := deadline - time.monotonic()) > 0:
                try:
                    nxt = self.q.get(timeout=left)
                except queue.Empty:
                    break
                if nxt is None:                            # close(): finish this batch, then stop
                    self.q.put(None)
                    break
                jobs.append(nxt)
            for kind in ("score", "compare", "rank"):
                group = [j for j in jobs if j.kind == kind]
                if group:
                    self._run_kind(kind, group)

    def _run_kind(self, kind: str, jobs: list[Job]) -> None:
        """All jobs of one kind in one model call; each job gets its own slice (or the call's error)."""
        cols = [sum((list(j.args[c]) for j in jobs), []) for c in range(len(jobs[0].args))]
        try:
            self.calls += 1
            if kind == "score":
                out = self.rm.score(cols[0], cols[1], _or_none(cols[2]))
            elif kind == "compare":
                out = self.rm.compare(cols[0], cols[1], cols[2], _or_none(cols[3]))
            else:
                out = rank_many(self.rm, *cols)
            at = 0
            for j in jobs:
                n = len(j.args[0])
                j.result, at = out[at:at + n], at + n
        except Exception as e:                             # a bug, not the client's: each request gets 500
            log.exception("model call failed")
            for j in jobs:
                j.error = e
        for j in jobs:
            j.done.set()


# ---- request bodies ----

def _strs(data: dict, key: str, n: int | None = None, optional: bool = False) -> list | None:
    """data[key] as a list of strings (of length n when given); None when optional and absent."""
    if key not in data or (optional and data[key] is None):
        if optional:
            return None
        raise BadRequest(f"missing field: {key}")
    v = data[key]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise BadRequest(f"{key} must be a list of strings")
    if n is not None and len(v) != n:
        raise BadRequest(f"{key} has {len(v)} items, expected {n}")
    return v


def _pointwise(rm, route: str) -> None:
    if rm.mode != "pointwise":
        raise BadRequest(f"{route} needs a pointwise model; this one is pairwise (use /compare or /rank)")


def _score(b: Batcher, data: dict) -> dict:
    _pointwise(b.rm, "/score")
    prompts = _strs(data, "prompts")
    responses = _strs(data, "responses", len(prompts))
    domains = _strs(data, "domains", len(prompts), optional=True) or [None] * len(prompts)
    return {"rewards": b.submit("score", prompts, responses, domains)}


def _compare(b: Batcher, data: dict) -> dict:
    prompts = _strs(data, "prompts")
    a, bb = _strs(data, "responses_a", len(prompts)), _strs(data, "responses_b", len(prompts))
    domains = _strs(data, "domains", len(prompts), optional=True) or [None] * len(prompts)
    return {"p_a": b.submit("compare", prompts, a, bb, domains)}


def _rank(b: Batcher, data: dict) -> dict:
    prompt, domain = data.get("prompt"), data.get("domain")
    if not isinstance(prompt, str):
        raise BadRequest("missing field: prompt" if prompt is None else "prompt must be a string")
    if domain is not None and not isinstance(domain, str):
        raise BadRequest("domain must be a string")
    candidates = _strs(data, "candidates")
    if not candidates:
        raise BadRequest("candidates must not be empty")
    if b.rm.mode == "pairwise" and len(candidates) > MAX_PAIRWISE_CANDIDATES:
        raise BadRequest(f"{len(candidates)} candidates: a pairwise model ranks at most {MAX_PAIRWISE_CANDIDATES} "
                         "per request (it scores n(n-1) sequences)")
    order, scores = b.submit("rank", [prompt], [candidates], [domain])[0]
    return {"order": order, "scores": scores}


def _get_reward(b: Batcher, data: dict) -> dict:
    _pointwise(b.rm, "/get_reward")
    queries = _strs(data, "query")
    prompts = _strs(data, "prompts", len(queries), optional=True)
    if prompts is None:
        prompts = [""] * len(queries)
    for i, (q, p) in enumerate(zip(queries, prompts)):
        if not q.startswith(p):
            raise BadRequest(f"query {i} does not start with its prompt")
    responses = [q[len(p):] for q, p in zip(queries, prompts)]
    return {"rewards": b.submit("score", prompts, responses, [None] * len(queries))}


ROUTES = {"/score": _score, "/compare": _compare, "/rank": _rank, "/get_reward": _get_reward}


# ---- HTTP ----

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"         # keep-alive: a client's connection serves many requests
    server_version = "tinyrm"
    timeout = 30                           # socket timeout, s (make_server sets it): stalled or idle clients

    def log_message(self, fmt, *args):    # the default writes every request to stderr
        log.debug("%s " + fmt, self.address_string(), *args)

    def _send(self, status: int, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _fail(self, status: int, msg: str, close: bool = False) -> None:
        self.close_connection = self.close_connection or close
        self._send(status, {"error": msg})

    def do_GET(self):
        if self.path == "/health":
            self._send(200, {"status": "ok", "mode": self.server.batcher.rm.mode})
        else:
            self._fail(404, f"no such route: GET {self.path}")

    def _body(self) -> bytes | None:
        """The request body, or None after answering 411/413/400/408 (the connection then closes)."""
        size = self.headers.get("Content-Length")
        if size is None:
            return self._fail(411, "Content-Length is required", close=True)
        if not size.isdigit():
            return self._fail(400, f"bad Content-Length: {size!r}", close=True)
        if int(size) > self.server.max_body_bytes:     # answered without reading the body
            return self._fail(413, f"body of {size} bytes is over the limit of {self.server.max_body_bytes}",
                              close=True)
        body = self._read(int(size))
        if body is None:
            return self._fail(408, f"body not received within {self.timeout} s", close=True)
        if len(body) != int(size):
            return self._fail(400, "body shorter than its Content-Length", close=True)
        return body

    def _read(self, size: int) -> bytes | None:
        """`size` bytes, or fewer if the client closes; None past the deadline. Each recv waits at most
        the socket timeout and the whole body at most about twice it, so a client trickling a byte at a
        time cannot hold the thread either."""
        parts, got, deadline = [], 0, time.monotonic() + self.timeout
        while got < size:
            try:
                chunk = self.rfile.read1(min(size - got, 1 << 16))
            except TimeoutError:
                return None
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
            if got < size and time.monotonic() > deadline:
                return None
        return b"".join(parts)

    def do_POST(self):
        route = ROUTES.get(self.path)
        if route is None:
            return self._fail(404, f"no such route: POST {self.path}", close=True)   # body left unread
        body = self._body()
        if body is None:
            return
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            return self._fail(400, f"malformed JSON: {e}")
        if not isinstance(data, dict):
            return self._fail(400, "the body must be a JSON object")
        try:
            self._send(200, route(self.server.batcher, data))
        except BadRequest as e:
            self._fail(400, str(e))
        except Exception as e:                         # logged by the worker; the server keeps running
            self._fail(500, f"{type(e).__name__}: {e}")


def make_server(rm, host: str = "127.0.0.1", port: int = 8000, window_s: float = 0.005,
                max_body_bytes: int = MAX_BODY_BYTES, timeout_s: float = 30.0) -> ThreadingHTTPServer:
    """A bound server (port 0: an ephemeral one; see server.server_address) with its Batcher started.
    Run it with serve_forever(); stop it with shutdown(), server_close() and server.batcher.close()."""
    handler = type("TinyrmHandler", (Handler,), {"timeout": timeout_s})
    server = ThreadingHTTPServer((host, port), handler, bind_and_activate=False)
    server.daemon_threads = True
    server.request_queue_size = 128          # the listen backlog: many clients may connect at once
    server.server_bind()
    server.server_activate()
    server.batcher, server.max_body_bytes = Batcher(rm, window_s), max_body_bytes
    return server


def serve(rm, host: str = "127.0.0.1", port: int = 8000, **kw) -> None:
    """Serve until interrupted."""
    server = make_server(rm, host, port, **kw)
    h, p = server.server_address[:2]
    print(f"tinyrm: serving a {rm.mode} model on http://{h}:{p} (POST /score /compare /rank /get_reward, "
          "GET /health)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:                # Ctrl-C is how a server is stopped: not an error
        print("tinyrm: stopped", flush=True)
    finally:
        server.server_close()
        server.batcher.close()
