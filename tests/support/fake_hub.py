"""A stand-in for the Hugging Face hub on a loopback port, for tests/hub.rs (stdlib only).

Serves the URL layout the `hf-hub` crate asks for:
  GET /api/models/OWNER/NAME/revision/REV   -> {"id", "sha", "siblings": [{"rfilename"}]}
  GET /OWNER/NAME/resolve/REV/FILE          -> the file (200/206), or for weights a 302 to /cdn/SHA256
  GET /cdn/SHA256                           -> the bytes of a "large file" (Range supported)
  GET /_log                                 -> the requests served so far (JSON), for assertions
with the headers hf-hub reads: X-Repo-Commit, ETag / X-Linked-Etag, Content-Range.

Usage: fake_hub.py MANIFEST.json; prints "PORT <n>" on stdout once it listens. The manifest:
  {"repos": {"OWNER/NAME": {"token": null | "secret", "api": true | false, "corrupt": false,
                            "refs": {"main": COMMIT, ...},
                            "commits": {COMMIT: {"FILE": "/path/on/disk", ...}}}}}
A repo with a token answers 401 unless the request carries "Authorization: Bearer <token>";
"api": false answers the listing with a bare 404 (a mirror without the API); "corrupt": true
announces a wrong sha256 for its large files.
"""

import hashlib
import http.server
import json
import re
import sys
import threading
import urllib.parse

LARGE_SUFFIXES = (".safetensors", ".bin")


def git_blob_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Hub:
    def __init__(self, manifest):
        self.repos = manifest["repos"]
        self.blobs = {}  # sha256 -> bytes, for /cdn
        self.log = []
        self.lock = threading.Lock()

    def commit_of(self, repo, rev):
        if rev in repo["commits"]:
            return rev
        return repo["refs"].get(rev)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub = None  # set before serving

    def log_message(self, *args):  # keep the test's output clean
        pass

    def send(self, status, body=b"", headers=None):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return status

    def error(self, status, code, message, extra=None):
        headers = {"X-Error-Code": code, "X-Error-Message": message} if code else {}
        headers.update(extra or {})
        return self.send(status, json.dumps({"error": message}).encode(), headers)

    def send_bytes(self, data, headers):
        """200 with the whole body, or 206 with the asked range (`bytes=a-` / `bytes=a-b`)."""
        headers = dict(headers, **{"Accept-Ranges": "bytes"})
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
        if not m:
            return self.send(200, data, headers)
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else len(data) - 1
        end = min(end, len(data) - 1)
        if start > end:
            return self.send(416, b"", dict(headers, **{"Content-Range": "bytes */%d" % len(data)}))
        headers["Content-Range"] = "bytes %d-%d/%d" % (start, end, len(data))
        return self.send(206, data[start : end + 1], headers)

    def authorised(self, repo):
        token = repo.get("token")
        return token is None or self.headers.get("Authorization") == "Bearer " + token

    def do_GET(self):
        hub = self.hub
        path = urllib.parse.urlsplit(self.path).path
        if path == "/_log":
            with hub.lock:
                body = json.dumps(hub.log).encode()
            return self.send(200, body, {"Content-Type": "application/json"})
        status = self.route(hub, path)
        with hub.lock:
            hub.log.append(
                {
                    "path": path,
                    "status": status,
                    "range": self.headers.get("Range"),
                    "auth": self.headers.get("Authorization") is not None,
                }
            )

    def route(self, hub, path):
        m = re.fullmatch(r"/cdn/([0-9a-f]{64})", path)
        if m:
            data = hub.blobs.get(m.group(1))
            if data is None:
                return self.error(404, None, "no such blob")
            return self.send_bytes(data, {"ETag": '"%s"' % m.group(1)})
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/(.+)", path)
        if m:
            return self.listing(hub, m.group(1), urllib.parse.unquote(m.group(2)))
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            return self.resolve(hub, m.group(1), urllib.parse.unquote(m.group(2)), m.group(3))
        return self.error(404, None, "no route")

    def find(self, hub, repo_id, rev):
        """(repo, commit) or an error status already sent."""
        repo = hub.repos.get(repo_id)
        if repo is None:
            return None, self.error(404, "RepoNotFound", "Repository not found")
        if not self.authorised(repo):
            return None, self.error(401, "RepoNotFound", "Invalid credentials in Authorization header")
        commit = hub.commit_of(repo, rev)
        if commit is None:
            return None, self.error(404, "RevisionNotFound", "Invalid rev id: " + rev)
        return (repo, commit), None

    def listing(self, hub, repo_id, rev):
        repo = hub.repos.get(repo_id)
        if repo is not None and not repo.get("api", True):
            return self.send(404, b"Not Found")
        found, status = self.find(hub, repo_id, rev)
        if found is None:
            return status
        repo, commit = found
        files = sorted(repo["commits"][commit])
        body = {"id": repo_id, "sha": commit, "siblings": [{"rfilename": f} for f in files]}
        return self.send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def resolve(self, hub, repo_id, rev, filename):
        found, status = self.find(hub, repo_id, rev)
        if found is None:
            return status
        repo, commit = found
        local = repo["commits"][commit].get(filename)
        if local is None:
            return self.error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit})
        with open(local, "rb") as f:
            data = f.read()
        if filename.endswith(LARGE_SUFFIXES):
            sha = hashlib.sha256(data).hexdigest()
            with hub.lock:
                hub.blobs[sha] = data
            announced = hashlib.sha256(data + b"corrupt").hexdigest() if repo.get("corrupt") else sha
            host = self.headers.get("Host")
            return self.send(
                302,
                b"",
                {
                    "Location": "http://%s/cdn/%s" % (host, sha),
                    "X-Repo-Commit": commit,
                    "X-Linked-Etag": '"%s"' % announced,
                    "X-Linked-Size": str(len(data)),
                    "ETag": '"%s"' % git_blob_sha1(data),
                },
            )
        return self.send_bytes(data, {"ETag": '"%s"' % git_blob_sha1(data), "X-Repo-Commit": commit})


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # Clients drop pooled keep-alive connections at exit: not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def main():
    with open(sys.argv[1]) as f:
        manifest = json.load(f)
    Handler.hub = Hub(manifest)
    server = Server(("127.0.0.1", 0), Handler)
    print("PORT %d" % server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
