"""A loopback HTTP server for download tests: serves a folder, counts requests, can misbehave."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        srv = self.server
        srv.hits.append(self.path)
        if srv.mode == "normal":
            return super().do_GET()
        data = (Path(srv.root) / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if srv.mode == "truncate":  # announces the full length, sends half, hangs up
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
        elif srv.mode == "short":  # consistently serves a short file (a broken mirror)
            self.send_header("Content-Length", str(len(data) // 2))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
        self.close_connection = True


class LoopbackServer:
    def __init__(self, root: Path):
        self.root = root
        handler = functools.partial(_Handler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.hits = []
        self.httpd.mode = "normal"
        self.httpd.root = str(root)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def hits(self) -> list[str]:
        return self.httpd.hits

    @property
    def mode(self) -> str:
        return self.httpd.mode

    @mode.setter
    def mode(self, value: str) -> None:
        self.httpd.mode = value

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
