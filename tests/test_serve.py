"""tinyrm serve on 127.0.0.1 (ephemeral port, server in a thread): answers equal the RewardModel's own
calls, concurrent requests share model calls, and bad requests get 400/413/408 without stopping it."""
from __future__ import annotations

import http.client
import json
import select
import socket
import threading
import time

import pytest

import tinyrm
from tinyrm.rank import rank
from tinyrm.scorer import RewardModel
from tinyrm.serve import make_server

from conftest import write_tiny_bert
from tolerance import reward_bound  # float32 bounds (tests/tolerance.py)

PROMPTS = ["What is 2+2?", "Name a colour.", "Say hello."]
RESPONSES = ["4", "Blue is a colour.", "Hello there, nice to meet you!"]


@pytest.fixture(scope="module")
def enc(tmp_path_factory, minilm_path):
    return tinyrm.load_encoder(write_tiny_bert(tmp_path_factory.mktemp("bert-serve"), minilm_path, seed=5, layers=2))


def start(rm, **kw):
    server = make_server(rm, "127.0.0.1", 0, **kw)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop(server):
    server.shutdown()
    server.server_close()
    server.batcher.close()


@pytest.fixture(scope="module")
def pointwise(enc):
    rm = RewardModel(enc, mode="pointwise", max_len=64)
    server = start(rm, max_body_bytes=4096, timeout_s=1.0)
    yield rm, server.server_address[1], server
    stop(server)


def request(port, method, path, body=None, raw: bytes | None = None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    c.request(method, path, body=data, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    out = r.status, json.loads(r.read())
    c.close()
    return out


def test_score_compare_rank_equal_the_model(pointwise):
    rm, port, _ = pointwise
    status, out = request(port, "POST", "/score", {"prompts": PROMPTS, "responses": RESPONSES})
    assert status == 200 and out["rewards"] == pytest.approx(rm.score(PROMPTS, RESPONSES), abs=reward_bound(rm.enc))
    status, out = request(port, "POST", "/compare", {"prompts": PROMPTS, "responses_a": RESPONSES,
                                                     "responses_b": RESPONSES[::-1]})
    assert status == 200 and out["p_a"] == pytest.approx(rm.compare(PROMPTS, RESPONSES, RESPONSES[::-1]),
                                                         abs=reward_bound(rm.enc))
    status, out = request(port, "POST", "/rank", {"prompt": PROMPTS[0], "candidates": ["4", "5", "four"]})
    order, scores = rank(rm, PROMPTS[0], ["4", "5", "four"])
    assert status == 200 and out["order"] == order and out["scores"] == pytest.approx(scores, abs=reward_bound(rm.enc))


def test_get_reward_is_openrlhfs_form(pointwise):
    rm, port, _ = pointwise
    queries = [p + r for p, r in zip(PROMPTS, RESPONSES)]
    status, out = request(port, "POST", "/get_reward", {"query": queries, "prompts": PROMPTS, "labels": [1, 2, 3]})
    assert status == 200 and set(out) == {"rewards"}
    assert out["rewards"] == pytest.approx(rm.score(PROMPTS, RESPONSES), abs=reward_bound(rm.enc))
    status, out = request(port, "POST", "/get_reward", {"query": queries})      # no prompts: all response
    assert out["rewards"] == pytest.approx(rm.score([""] * 3, queries), abs=reward_bound(rm.enc))
    status, out = request(port, "POST", "/get_reward", {"query": ["abc"], "prompts": ["xyz"]})
    assert status == 400 and "does not start with its prompt" in out["error"]


def test_concurrent_requests_share_model_calls(pointwise):
    rm, port, server = pointwise
    server.batcher.window_s, calls0 = 0.3, server.batcher.calls     # a wide window: all 8 arrive within it
    results = [None] * 8

    def client(i):
        results[i] = request(port, "POST", "/score", {"prompts": PROMPTS[: i % 3 + 1], "responses": RESPONSES[: i % 3 + 1]})

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        server.batcher.window_s = 0.005
    assert server.batcher.calls - calls0 < 8
    for i, (status, out) in enumerate(results):
        n = i % 3 + 1
        assert status == 200 and out["rewards"] == pytest.approx(rm.score(PROMPTS[:n], RESPONSES[:n]),
                                                                 abs=reward_bound(rm.enc))


@pytest.mark.parametrize("raw, msg", [
    (b'{"prompts": ["a"], "responses": ', "malformed JSON"),
    (b'["a", "b"]', "must be a JSON object"),
    (b'{"prompts": ["a"]}', "missing field: responses"),
    (b'{"prompts": "a", "responses": ["b"]}', "prompts must be a list of strings"),
    (b'{"prompts": ["a", "b"], "responses": ["c"]}', "responses has 1 items, expected 2"),
    (b'{"prompts": ["a"], "responses": [1]}', "responses must be a list of strings"),
    (b'\xff\xfe', "malformed JSON"),
])
def test_malformed_bodies_get_400_and_the_server_goes_on(pointwise, raw, msg):
    _, port, _ = pointwise
    status, out = request(port, "POST", "/score", raw=raw)
    assert status == 400 and msg in out["error"]
    assert request(port, "GET", "/health") == (200, {"status": "ok", "mode": "pointwise"})


def raw_exchange(port, head: bytes, wait: float = 5.0) -> tuple[bytes, float]:
    """Send raw bytes, read until the server closes; (response, seconds)."""
    t = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(head)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - t


def test_oversized_body_gets_413_without_being_read(pointwise):
    _, port, _ = pointwise
    resp, _ = raw_exchange(port, b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n{")
    assert resp.startswith(b"HTTP/1.1 413") and b"over the limit of 4096" in resp
    assert request(port, "GET", "/health")[0] == 200


def test_a_stalled_body_times_out_and_others_are_served_meanwhile(pointwise):
    _, port, _ = pointwise
    out = {}
    t = threading.Thread(target=lambda: out.update(r=raw_exchange(
        port, b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompts\"")))
    t.start()
    assert request(port, "GET", "/health")[0] == 200               # served while that thread waits
    t.join()
    resp, seconds = out["r"]
    assert resp.startswith(b"HTTP/1.1 408") and 0.9 <= seconds < 4     # timeout_s=1.0
    status, _ = request(port, "POST", "/score", {"prompts": ["a"], "responses": ["b"]})
    assert status == 200


def test_a_trickled_body_meets_the_deadline(pointwise):
    """One byte every 0.4 s never trips the 1 s socket timeout; the body's deadline still ends it."""
    _, port, _ = pointwise
    t = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        resp = b""
        for _ in range(20):
            if select.select([s], [], [], 0.4)[0]:      # the server has answered: stop sending
                break
            s.sendall(b" ")
        s.settimeout(5)
        try:
            while chunk := s.recv(65536):
                resp += chunk
        except OSError:
            pass
    assert resp.startswith(b"HTTP/1.1 408") and time.monotonic() - t < 5


def test_missing_length_and_unknown_routes(pointwise):
    _, port, _ = pointwise
    resp, _ = raw_exchange(port, b"POST /score HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 411")
    assert request(port, "POST", "/nope", {})[0] == 404
    assert request(port, "GET", "/score")[0] == 404
    assert request(port, "GET", "/health")[0] == 200


def test_pairwise_model_compares_and_ranks_but_gives_no_rewards(enc):
    rm = RewardModel(enc, mode="pairwise", max_len=96)
    server = start(rm)
    port = server.server_address[1]
    try:
        status, out = request(port, "POST", "/get_reward", {"query": ["hi"]})
        assert status == 400 and "needs a pointwise model" in out["error"]
        status, out = request(port, "POST", "/rank", {"prompt": "q", "candidates": ["a", "bb", "ccc"]})
        order, scores = rank(rm, "q", ["a", "bb", "ccc"])
        assert status == 200 and out["order"] == order
        assert out["scores"] == pytest.approx(scores, abs=reward_bound(rm.enc))
        assert request(port, "POST", "/rank", {"prompt": "q", "candidates": []})[0] == 400
        status, out = request(port, "POST", "/rank", {"prompt": "q", "candidates": ["x"] * 65})
        assert status == 400 and "at most 64" in out["error"]
    finally:
        stop(server)


def test_cli_serve_on_a_taken_port_is_one_error_line(pointwise, tmp_path, minilm_path, capsys):
    """`tinyrm serve --port P` while P is taken: exit status 2 and one line naming host and port."""
    from tinyrm.cli import main
    port = pointwise[1]
    model = write_tiny_bert(tmp_path / "m", minilm_path, seed=5, layers=2)
    assert main(["serve", "--model", str(model), "--port", str(port)]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error")]
    assert len(err) == 1 and err[0].startswith(f"error: cannot listen on 127.0.0.1:{port}: "), err
    assert request(port, "GET", "/health")[0] == 200           # the server holding the port is untouched
