"""A stand-in for the Hugging Face hub and raw.githubusercontent.com on 127.0.0.1, for download tests.

It answers the way huggingface_hub's file_download.py needs: HEAD and GET on
`/{repo}/resolve/{revision}/{path}` (models) and `/datasets/{repo}/resolve/{revision}/{path}`, with ETag,
X-Repo-Commit and Content-Length, byte ranges (`Range: bytes=N-` -> 206 + Content-Range), and 404 with
`X-Error-Code: EntryNotFound` for anything else. Raw GitHub files are served at `/gh/{owner}/{repo}/{commit}/{path}`.
`drop_once` names URL paths whose first GET sends the full Content-Length but only half of the body and
then closes the connection, as a network failure would.
"""
from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubServer:
    def __init__(self):
        self.files: dict[str, bytes] = {}   # URL path (unquoted) -> content
        self.drop_once: set[str] = set()
        self.log: list[tuple[str, str, str | None]] = []   # (method, path, Range header)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                server._serve(self, body=False)

            def do_GET(self):
                server._serve(self, body=True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def add_hub(self, repo: str, revision: str, path: str, data: bytes, repo_type: str = "dataset"):
        prefix = "/datasets" if repo_type == "dataset" else ""
        self.files[f"{prefix}/{repo}/resolve/{revision}/{path}"] = data

    def add_github(self, repo: str, commit: str, path: str, data: bytes):
        self.files[f"/gh/{repo}/{commit}/{path}"] = data

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def _serve(self, h: BaseHTTPRequestHandler, body: bool):
        path = unquote(h.path.split("?")[0])
        rng = h.headers.get("Range")
        self.log.append((h.command, path, rng))
        data = self.files.get(path)
        if data is None:
            h.send_response(404)
            h.send_header("X-Error-Code", "EntryNotFound")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        start = int(rng.removeprefix("bytes=").split("-")[0]) if rng else 0
        part = data[start:]
        h.send_response(206 if rng else 200)
        h.send_header("Content-Length", str(len(part)))
        h.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
        h.send_header("Accept-Ranges", "bytes")
        if "/resolve/" in path:
            rev = path.split("/resolve/")[1].split("/")[0]
            h.send_header("X-Repo-Commit", rev if len(rev) == 40 else FAKE_COMMIT)
        if rng:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if not body:
            return
        if path in self.drop_once:
            self.drop_once.discard(path)
            h.wfile.write(part[: len(part) // 2])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)
            return
        h.wfile.write(part)
