"""The test Hub of hub_server.py, driven for real by huggingface_hub and transformers.

Every client call runs in a subprocess, because huggingface_hub reads HF_ENDPOINT when it is imported and conftest.py
puts this process offline. Each script prints one JSON line that the test checks.
"""

import socket
import threading
import time

import pytest
from conftest import run_client
from hub_server import HubServer


pytestmark = pytest.mark.slow  # fresh interpreters against the Hub stand-in


def test_upload_folder_list_and_download_give_back_the_same_bytes(hub, tmp_path):
    out = run_client(
        hub,
        tmp_path,
        """
        import json, os, random
        from huggingface_hub import HfApi, hf_hub_download
        work = os.environ["WORK"]
        files = {"a.txt": b"hello", "sub/b.json": b'{"x": 1}', "sub/big.bin": random.Random(0).randbytes(10_500_000)}
        for name, data in files.items():
            os.makedirs(os.path.dirname(f"{work}/up/{name}"), exist_ok=True)
            open(f"{work}/up/{name}", "wb").write(data)
        api = HfApi()
        user = api.whoami()["name"]
        url = api.create_repo("test-user/files", private=True)
        again = api.create_repo("test-user/files", exist_ok=True)
        commit = api.upload_folder(repo_id="test-user/files", folder_path=f"{work}/up")
        api.upload_file(path_or_fileobj=b"late", path_in_repo="c.txt", repo_id="test-user/files")
        info = api.model_info("test-user/files")
        print(json.dumps({
            "user": user, "urls": [url.repo_id, again.repo_id], "private": info.private, "sha": info.sha,
            "folder_commit": commit.oid, "files": api.list_repo_files("test-user/files"),
            "sizes": {s.rfilename: s.size for s in info.siblings},
            "same": {n: open(hf_hub_download("test-user/files", n), "rb").read() == d for n, d in files.items()},
            "late": open(hf_hub_download("test-user/files", "c.txt"), "rb").read().decode(),
            "exists": [api.repo_exists("test-user/files"), api.repo_exists("test-user/files", token=False),
                       api.repo_exists("test-user/nothing")],
        }))
        """,
    )
    assert out["user"] == "test-user"
    assert out["urls"] == ["test-user/files"] * 2
    assert out["files"] == ["a.txt", "c.txt", "sub/b.json", "sub/big.bin"]
    assert out["sizes"] == {"a.txt": 5, "c.txt": 4, "sub/b.json": 8, "sub/big.bin": 10_500_000}
    assert out["same"] == {"a.txt": True, "sub/b.json": True, "sub/big.bin": True}
    assert out["late"] == "late"
    assert out["private"] is True
    assert out["exists"] == [True, False, False]
    commits = [c["id"] for c in hub.store.repos["models/test-user/files"]["commits"]]
    assert len(commits) == 3
    assert out["folder_commit"] == commits[1]
    assert out["sha"] == commits[2]


def test_snapshot_download_follows_main_and_keeps_older_commits(hub, tmp_path):
    out = run_client(
        hub,
        tmp_path,
        """
        import json, os
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, snapshot_download
        api = HfApi()
        api.create_repo("test-user/snap")
        add = lambda path, data: CommitOperationAdd(path_in_repo=path, path_or_fileobj=data)
        v1 = api.create_commit("test-user/snap", [add("w.txt", b"one"), add("d/x.txt", b"x")], commit_message="v1")
        api.create_commit("test-user/snap", [add("w.txt", b"two"), CommitOperationDelete("d/")], commit_message="v2",
                          parent_commit=v1.oid)
        def read(folder):
            return {os.path.relpath(os.path.join(root, name), folder): open(os.path.join(root, name)).read()
                    for root, _, names in os.walk(folder) for name in names}
        try:  # v1 is no longer the head of main: a commit based on it must be refused
            api.create_commit("test-user/snap", [add("w.txt", b"3")], commit_message="v3", parent_commit=v1.oid)
            stale = "accepted"
        except Exception as error:
            stale = error.response.status_code
        print(json.dumps({"main": read(snapshot_download("test-user/snap")),
                          "v1": read(snapshot_download("test-user/snap", revision=v1.oid)), "stale": stale}))
        """,
    )
    assert out["main"] == {"w.txt": "two"}
    assert out["v1"] == {"w.txt": "one", "d/x.txt": "x"}
    assert out["stale"] == 412


def test_missing_files_repos_and_revisions_raise_the_client_errors(hub, tmp_path):
    out = run_client(
        hub,
        tmp_path,
        """
        import json
        from huggingface_hub import HfApi, hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
        HfApi().upload_file(path_or_fileobj=b"1", path_in_repo="here.txt",
                            repo_id=HfApi().create_repo("test-user/err").repo_id)
        def error(**kwargs):
            try:
                hf_hub_download(**kwargs)
            except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError) as e:
                return [cls.__name__ for cls in (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)
                        if isinstance(e, cls)]
        print(json.dumps({
            "file": error(repo_id="test-user/err", filename="absent.txt"),
            "repo": error(repo_id="test-user/absent", filename="here.txt"),
            "revision": error(repo_id="test-user/err", filename="here.txt", revision="f" * 40),
            "branch": error(repo_id="test-user/err", filename="here.txt", revision="no-branch"),
        }))
        """,
    )
    assert out == {
        "file": ["EntryNotFoundError"],
        "repo": ["RepositoryNotFoundError"],
        "revision": ["RevisionNotFoundError"],
        "branch": ["RevisionNotFoundError"],
    }


STATE_HASH = """
    import hashlib, json
    def state_hash(model):
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode() + tensor.numpy().tobytes())
        return digest.hexdigest()
"""


def test_transformers_push_to_hub_and_from_pretrained_round_trip(hub, tmp_path):
    pushed = run_client(
        hub,
        tmp_path,
        STATE_HASH
        + """
    import torch
    from transformers import CLIPConfig, CLIPModel
    from modeling_diffclip import DiffCLIPProcessor
    torch.manual_seed(0)
    layers = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(text_config=layers, vision_config=dict(layers, image_size=32, patch_size=8), projection_dim=16)
    model = CLIPModel(config)
    first = model.push_to_hub("test-user/tiny-clip")
    unchanged = model.push_to_hub("test-user/tiny-clip")  # the preupload oids let the client skip the commit
    processor = DiffCLIPProcessor.from_defaults()
    processor.push_to_hub("test-user/tiny-clip")
    print(json.dumps({"hash": state_hash(model), "commits": [first.oid, unchanged.oid],
                      "ids": processor(text=["a photo of a cat"])["input_ids"]}))
    """,
        home="pusher-home",
    )
    pulled = run_client(
        hub,
        tmp_path,
        STATE_HASH
        + """
    from transformers import AutoTokenizer, CLIPModel
    from modeling_diffclip import DiffCLIPProcessor
    model = CLIPModel.from_pretrained("test-user/tiny-clip")
    processor = DiffCLIPProcessor.from_pretrained("test-user/tiny-clip")
    tokenizer = AutoTokenizer.from_pretrained("test-user/tiny-clip")
    print(json.dumps({"hash": state_hash(model), "ids": processor(text=["a photo of a cat"])["input_ids"],
                      "tokenizer_ids": tokenizer(["a photo of a cat"])["input_ids"]}))
    """,
        home="puller-home",
    )
    assert pulled["hash"] == pushed["hash"]
    assert pulled["ids"] == pulled["tokenizer_ids"] == pushed["ids"] == [[49406, 320, 1125, 539, 320, 2368, 49407]]
    assert pushed["commits"][0] == pushed["commits"][1]
    files = hub.store.repos["models/test-user/tiny-clip"]["commits"][-1]["files"]
    assert {"config.json", "model.safetensors", "README.md", "processor_config.json", "tokenizer.json"} <= set(files)
    assert any(line.startswith("GET ") and line.endswith("/model.safetensors") for line in hub.requests)


def test_stop_releases_the_port_and_the_thread(tmp_path):
    before = set(threading.enumerate())
    with HubServer(tmp_path) as server:
        port = int(server.url.rsplit(":", 1)[1])
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        server.store.create("models/test-user/kept", private=False)
    # the handler of the probe above may still be finishing: wait for it, and name what is still running if it hangs
    deadline = time.monotonic() + 120
    while (running := set(threading.enumerate()) - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running, f"threads still running 2 minutes after the server stopped: {sorted(t.name for t in running)}"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    with HubServer(tmp_path) as reopened:  # the storage directory outlives the server
        assert list(reopened.store.repos) == ["models/test-user/kept"]
