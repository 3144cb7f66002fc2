"""A small Hugging Face Hub stand-in for tests: ``huggingface_hub`` and ``transformers`` push to and pull from it.

Start it with ``with HubServer(storage_dir) as hub: ...`` and point clients at ``hub.url`` through
``HF_ENDPOINT`` (read once, when ``huggingface_hub`` is imported: so run clients in subprocesses started with it,
or use ``HfApi(endpoint=hub.url)``). It binds 127.0.0.1 on a free port and serves from a daemon thread.

Endpoints spoken (``{type}`` is ``models`` or ``datasets``; dataset URLs outside ``/api`` carry a ``datasets/``
prefix; repo ids must be ``namespace/name``):

- ``GET /api/whoami-v2``: always the user ``test-user``.
- ``GET /api/agent-harnesses``: an empty registry (huggingface_hub fetches it, at most daily, to name the AI
  agent in its user agent).
- ``POST /api/repos/create``: 409 if the repo exists (what ``exist_ok=True`` expects); ``private`` is kept; a
  name without namespace goes to ``test-user``.
- ``GET /api/{type}/{repo_id}[/revision/{rev}]``: repo info with ``sha`` and ``siblings`` (``repo_info``,
  ``model_info``, ``repo_exists``, ``snapshot_download``).
- ``GET /api/{type}/{repo_id}/tree/{rev}[/{path}]``: the listing behind ``list_repo_files`` / ``list_repo_tree``.
- ``POST /api/{type}/{repo_id}/preupload/{rev}`` and ``POST /api/{type}/{repo_id}/commit/{rev}`` (NDJSON):
  ``upload_file``, ``upload_folder``, ``create_commit``; base64 ``file`` additions, ``deletedFile``,
  ``deletedFolder``, and ``parentCommit`` checks.
- ``POST /api/validate-yaml``: accepts every model card (``create_commit`` calls it for README.md).
- ``HEAD``/``GET /{repo_id}/resolve/{rev}/{path}``: ``hf_hub_download`` and friends, with ``X-Repo-Commit``,
  ``ETag`` (the git blob id) and ``Content-Length``; 404s carry the ``X-Error-Code`` the client maps to
  ``RepositoryNotFoundError`` (``RepoNotFound``), ``RevisionNotFoundError`` or ``EntryNotFoundError``.

Deliberately not spoken:

- Real auth: any bearer token is accepted. The only check is that private repos look missing to a request
  without a token, as on the Hub.
- Xet and LFS storage: the preupload answer says ``"uploadMode": "regular"`` for every file, whatever its size,
  so clients send all content base64-encoded inside the commit itself. No response carries ``X-Xet-*`` headers,
  ``xetHash`` or ``lfs`` fields, which is what makes the clients download over plain HTTP. ``HF_HUB_DISABLE_XET``
  is not needed.
- Branches, tags, pull requests (``create_pr``), ``Range`` requests (clients fall back to a full download) and
  anything else. Revisions are ``main`` or a commit id; each commit keeps a full file snapshot, which is enough
  history for clients that pin a commit (``snapshot_download`` does). New repos start with an empty commit.

Requests to routes not listed above get a 404, and requests that break the server a 500; both are kept in
``HubServer.unhandled`` so that a test can notice when a client starts needing something new. Every request line is
kept in ``HubServer.requests``.
"""

import base64
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


USER = "test-user"
REPO_TYPES = ("models", "datasets")  # the URL forms of the repo types spoken


def git_blob_oid(data: bytes) -> str:
    """Git's id of a blob: what the Hub uses as ETag and ``oid`` of a regular (non-LFS) file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubError(Exception):
    """An error answer; ``code`` goes to ``X-Error-Code``, which the client maps to its exception classes."""

    def __init__(self, status, message, code=None, commit=None):
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit


class HubStore:
    """Repos and their commits in ``root/repos.json``; file contents in ``root/blobs/<git blob id>``."""

    def __init__(self, root):
        self.root = root
        self.lock = threading.Lock()  # handlers run in parallel threads
        os.makedirs(os.path.join(root, "blobs"), exist_ok=True)
        self.index = os.path.join(root, "repos.json")
        self.repos = {}
        if os.path.exists(self.index):
            with open(self.index) as f:
                self.repos = json.load(f)

    def _save(self):
        with open(self.index, "w") as f:
            json.dump(self.repos, f)

    def blob_path(self, oid):
        return os.path.join(self.root, "blobs", oid)

    def repo(self, key, authorized):
        repo = self.repos.get(key)
        if repo is None or (repo["private"] and not authorized):
            raise HubError(404, f"Repository {key} not found", "RepoNotFound")
        return repo

    @staticmethod
    def commit(repo, revision):
        """The commit a revision names: ``main`` is the last one, any earlier one is reachable by its id."""
        commits = repo["commits"]
        found = commits[-1] if revision == "main" else next((c for c in commits if c["id"] == revision), None)
        if found is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return found

    def add_commit(self, repo, title, files):
        date = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        parent = repo["commits"][-1]["id"] if repo["commits"] else ""
        seed = json.dumps([parent, title, files, time.time_ns()]).encode()
        commit = {"id": hashlib.sha1(seed).hexdigest(), "title": title, "date": date, "files": files}
        repo["commits"].append(commit)
        self._save()
        return commit

    def create(self, key, private):
        with self.lock:
            if key in self.repos:
                return False
            self.repos[key] = repo = {"private": private, "commits": []}
            self.add_commit(repo, "initial commit", {})
            return True

    def apply_commit(self, key, revision, lines):
        """Apply an NDJSON commit payload (a header line, then one operation per line) on top of ``main``."""
        if revision != "main":
            raise HubError(404, f"Branch {revision} not found (only main exists)", "RevisionNotFound")
        header, ops = lines[0], lines[1:]
        if header.get("key") != "header":
            raise HubError(400, "The first line of a commit must be its header")
        with self.lock:
            repo = self.repos[key]
            head = repo["commits"][-1]
            parent = header["value"].get("parentCommit")
            if parent not in (None, head["id"]):
                raise HubError(412, f"parentCommit {parent} is not the head of main ({head['id']})")
            files = dict(head["files"])
            for op in ops:
                kind, value = op["key"], op["value"]
                path = value["path"]
                if kind == "file":
                    data = value["content"].encode()
                    data = base64.b64decode(data) if value.get("encoding") == "base64" else data
                    oid = git_blob_oid(data)
                    with open(self.blob_path(oid), "wb") as f:
                        f.write(data)
                    files[path] = [oid, len(data)]
                elif kind == "deletedFile":
                    if files.pop(path, None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                elif kind == "deletedFolder":
                    files = {p: v for p, v in files.items() if not p.startswith(path.rstrip("/") + "/")}
                else:  # lfsFile: we never ask for LFS uploads, so a client sending one is a bug
                    raise HubError(400, f"Unsupported commit operation {kind!r}: this test Hub has no LFS/xet storage")
            return self.add_commit(repo, header["value"]["summary"], files)


def tree_entries(files, path, recursive):
    """Hub tree listing of ``path``: files and folders below it, one level deep unless ``recursive``."""
    prefix = path.strip("/") + "/" if path else ""
    entries = {}
    for name, (oid, size) in sorted(files.items()):
        if not name.startswith(prefix):
            continue
        parts = name[len(prefix) :].split("/")
        for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
            folder = prefix + "/".join(parts[:depth])
            entries[folder] = {"type": "directory", "path": folder, "oid": git_blob_oid(folder.encode())}
        if recursive or len(parts) == 1:
            entries[name] = {"type": "file", "path": name, "oid": oid, "size": size}
    if path and not entries:
        raise HubError(404, f"{path} does not exist", "EntryNotFound")
    return sorted(entries.values(), key=lambda entry: entry["path"])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # the clients keep connections alive; every answer has a Content-Length
    server: "_Server"

    def log_message(self, format, *args):  # keep pytest output clean; `HubServer.requests` has the log
        pass

    def do_GET(self):
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def _dispatch(self):
        url = urlsplit(self.path)
        # Split before unquoting: revisions are quoted with safe="" and may contain "/".
        self.parts = [unquote(part) for part in url.path.strip("/").split("/")]
        self.query = parse_qs(url.query)
        size = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(size) if size else b""  # always drained, or keep-alive would desync
        self.server.hub.requests.append(f"{self.command} {self.path}")
        try:
            handled = self._route()
            if handled is False:
                self.server.hub.unhandled.append(f"{self.command} {self.path}")
                raise HubError(404, f"{self.command} {url.path} is not implemented by the test Hub")
        except HubError as error:
            headers = {"X-Error-Message": error.message}
            if error.code:
                headers["X-Error-Code"] = error.code
            if error.commit:
                headers["X-Repo-Commit"] = error.commit
            self._send(error.status, {"error": error.message}, headers)
        except Exception as error:  # a server bug: answer (a dropped connection makes clients retry) and record it
            self.server.hub.unhandled.append(f"{self.command} {self.path}: {error!r}")
            self._send(500, {"error": repr(error)})

    def _send(self, status, payload, headers=None):
        body = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    @property
    def authorized(self):
        return bool(self.headers.get("Authorization"))

    def _route(self):
        parts, method = self.parts, self.command
        if parts == ["api", "whoami-v2"] and method == "GET":
            if not self.authorized:
                raise HubError(401, "Invalid credentials in Authorization header")
            return self._send(
                200,
                {
                    "type": "user",
                    "id": "0" * 24,
                    "name": USER,
                    "fullname": "Test User",
                    "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
                },
            )
        if parts == ["api", "agent-harnesses"] and method == "GET":  # the client's agent detection; empty = none
            return self._send(200, {"standardEnvVars": [], "harnesses": {}})
        if parts == ["api", "validate-yaml"] and method == "POST":
            return self._send(200, {"errors": [], "warnings": []})
        if parts == ["api", "repos", "create"] and method == "POST":
            return self._create_repo(json.loads(self.body))
        if len(parts) >= 4 and parts[0] == "api" and parts[1] in REPO_TYPES:
            return self._repo_api(f"{parts[1]}/{parts[2]}/{parts[3]}", parts[4:])
        prefix = parts[0] if parts and parts[0] == "datasets" else "models"
        parts = parts[1:] if prefix == "datasets" else parts
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(f"{prefix}/{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        return False

    def _create_repo(self, payload):
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        repo_type = payload.get("type") or "model"
        if f"{repo_type}s" not in REPO_TYPES:
            raise HubError(400, f"Repo type {repo_type!r} is not supported by the test Hub")
        url = f"{self.server.hub.url}/{'' if repo_type == 'model' else 'datasets/'}{repo_id}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        if not self.server.hub.store.create(f"{repo_type}s/{repo_id}", private):
            return self._send(409, {"error": "You already created this repo", "url": url})
        return self._send(200, {"url": url, "name": repo_id})

    def _repo_api(self, key, rest):
        store, method = self.server.hub.store, self.command
        repo = store.repo(key, self.authorized)
        action = rest[0] if rest else "revision"
        revision = rest[1] if len(rest) > 1 else "main"
        if action == "revision" and method == "GET" and len(rest) <= 2:
            commit = store.commit(repo, revision)
            return self._send(
                200,
                {
                    "id": key.split("/", 1)[1],
                    "author": key.split("/")[1],
                    "sha": commit["id"],
                    "private": repo["private"],
                    "gated": False,
                    "disabled": False,
                    "tags": [],
                    "lastModified": commit["date"],
                    "createdAt": repo["commits"][0]["date"],
                    "siblings": [
                        {"rfilename": p, "size": s, "blobId": o} for p, (o, s) in sorted(commit["files"].items())
                    ],
                },
            )
        if action == "tree" and method == "GET":
            files = store.commit(repo, revision)["files"]
            recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
            return self._send(200, tree_entries(files, "/".join(rest[2:]), recursive))
        if action == "preupload" and method == "POST":
            files = store.commit(repo, revision)["files"]
            # "regular" for every file, whatever its size: this is what keeps clients away from LFS and xet.
            # `oid` lets them skip files that did not change.
            return self._send(
                200,
                {
                    "files": [
                        {
                            "path": f["path"],
                            "uploadMode": "regular",
                            "shouldIgnore": False,
                            "oid": files.get(f["path"], [None])[0],
                        }
                        for f in json.loads(self.body)["files"]
                    ]
                },
            )
        if action == "commit" and method == "POST":
            if self.query.get("create_pr", ["0"])[0] not in ("0", "false"):
                raise HubError(400, "The test Hub does not support pull requests")
            lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
            commit = store.apply_commit(key, revision, lines)
            web = f"{self.server.hub.url}/{key.removeprefix('models/')}"
            return self._send(
                200,
                {
                    "success": True,
                    "commitOid": commit["id"],
                    "commitUrl": f"{web}/commit/{commit['id']}",
                    "pullRequestUrl": None,
                },
            )
        return False

    def _resolve(self, key, revision, path):
        store = self.server.hub.store
        commit = store.commit(store.repo(key, self.authorized), revision)
        if path not in commit["files"]:
            # X-Repo-Commit lets the client cache that the file is missing at this commit.
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", commit["id"])
        oid, size = commit["files"][path]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.send_header("ETag", f'"{oid}"')
        self.send_header("X-Repo-Commit", commit["id"])
        self.end_headers()
        if self.command == "GET":
            with open(store.blob_path(oid), "rb") as f:
                shutil.copyfileobj(f, self.wfile)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a client that keeps a connection open must not block shutdown
    hub: "HubServer"


class HubServer:
    """The test Hub on 127.0.0.1: ``with HubServer(storage_dir) as hub: env["HF_ENDPOINT"] = hub.url``.

    ``storage_dir`` holds the repos (reusing a directory keeps them); without one a temporary directory is used
    and removed by ``stop()``.
    """

    def __init__(self, storage_dir=None):
        self._tmp = None if storage_dir else tempfile.mkdtemp(prefix="hub-server-")
        self.store = HubStore(str(storage_dir or self._tmp))
        self.requests, self.unhandled = [], []
        self._server = None
        self._thread = None

    def start(self):
        self._server = _Server(("127.0.0.1", 0), _Handler)  # port 0: the OS picks a free port
        self._server.hub = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()
