"""A fake Hugging Face Hub on loopback: the endpoints `HfApi.create_repo` and `upload_folder` call
(repos/create, validate-yaml, preupload, commit), answering as the Hub documents them, and recording every
request (path, headers, the repository's visibility, the committed files). Anything else is a
404, so a client that needs more fails the test instead of passing it silently."""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml


class FakeHub:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.repos: dict[str, dict] = {}
        self.validated = 0
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.requests.append({"path": self.path, "authorization": self.headers.get("Authorization")})
                status, answer = hub.answer(self.path, body, f"http://127.0.0.1:{self.server.server_port}")
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, path: str, body: bytes, base: str) -> tuple[int, dict]:
        if path == "/api/repos/create":
            request = json.loads(body)
            repo = f"{request['organization']}/{request['name']}"
            self.repos.setdefault(repo, {"visibility": request.get("visibility"), "files": {}})
            return 200, {"url": f"{base}/{repo}", "name": repo}
        if path == "/api/validate-yaml":  # the client sends README.md before committing it
            front = re.match(r"^---\s*\n(.*?)\n---\s*\n", json.loads(body)["content"], re.DOTALL)
            try:
                if not front or not isinstance(yaml.safe_load(front.group(1)), dict):
                    return 400, {"errors": [{"message": "no YAML metadata block"}]}
            except yaml.YAMLError as error:
                return 400, {"errors": [{"message": str(error)}]}
            self.validated += 1
            return 200, {"errors": [], "warnings": []}
        if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/main", path):
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                   for f in files]}
        if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/main", path):
            repo = self.repos[match.group(1)]
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    repo["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] == "header":
                    repo["message"] = item["value"]["summary"]
            return 200, {"success": True, "commitOid": "0" * 40,
                         "commitUrl": f"{base}/{match.group(1)}/commit/0"}
        return 404, {"error": f"the fake hub has no {path}"}

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
