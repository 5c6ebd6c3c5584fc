"""`python -m bench data cifar` against a local HTTP server on 127.0.0.1 that serves a tiny
archive in CIFAR-10's layout: a good download, a wrong checksum and a truncated
transfer; the last two are one-line errors that leave no half-written folder."""
import hashlib
import http.server
import io
import os
import pickle
import subprocess
import sys
import tarfile
import threading

import numpy as np
import pytest

from conftest import REPO

FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _archive() -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name in FILES + ["batches.meta"]:
            d = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
            raw = pickle.dumps(d)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            t.addfile(info, io.BytesIO(raw))
    return buf.getvalue()


@pytest.fixture(scope="module")
def server():
    body = _archive()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            data = body
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.path.endswith("/cut.tar.gz"):   # promises everything, sends a third, hangs up
                self.wfile.write(data[: len(data) // 3])
                self.wfile.flush()
                self.connection.shutdown(2)
                return
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hashlib.md5(body).hexdigest()
    httpd.shutdown()


def _data(*args):
    return subprocess.run([sys.executable, "-m", "bench", "-q", "data", "cifar", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_download_checks_and_extracts(server, tmp_path):
    url, md5 = server
    r = _data("--data-dir", str(tmp_path), "--url", url + "/cifar.tar.gz", "--md5", md5)
    assert r.returncode == 0, r.stderr
    folder = tmp_path / "cifar-10-batches-py"
    assert r.stdout.strip() == str(folder) and sorted(os.listdir(folder)) == sorted(FILES + ["batches.meta"])
    assert os.listdir(tmp_path) == ["cifar-10-batches-py"]   # no archive, no temporary folder left
    from bench.data import load
    ds = load("cifar", str(tmp_path))
    assert ds.X_train.shape == (20, 3, 32, 32) and ds.X_test.shape == (4, 3, 32, 32)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["checksum", "truncated", "unreachable"])
def test_bad_downloads_are_one_line_and_leave_nothing(server, tmp_path, case):
    url, md5 = server
    args = {"checksum": ["--url", url + "/cifar.tar.gz"],   # the original's MD5: not this file's
            "truncated": ["--url", url + "/cut.tar.gz", "--md5", md5],
            "unreachable": ["--url", "http://127.0.0.1:9/nothing.tar.gz"]}[case]
    r = _data("--data-dir", str(tmp_path), *args)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    words = {"checksum": "expected c58f30108f718f92721af3b95e74349a", "truncated": "stopped at", "unreachable": "failed"}
    assert words[case] in r.stderr and "cifar" in r.stderr
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- vnncomp
VNN_FILES = {"acasxu/net.onnx": b"onnx bytes " * 1000, "acasxu/prop_1.vnnlib": b"(assert (<= X_0 1.0))\n",
             "eran/nets/other.onnx": b"more bytes " * 300}


@pytest.fixture(scope="module")
def vnn_server():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            rel = self.path.split("/", 2)[2]          # /<mode>/<path under benchmarks/>
            data = VNN_FILES.get(rel)
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.path.startswith("/cut/") and rel.endswith("other.onnx"):   # the last file breaks off
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.connection.shutdown(2)
                return
            self.wfile.write(b"X" + data[1:] if self.path.startswith("/bad/") and rel.endswith("other.onnx")
                             else data)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _files():
    return {rel: (hashlib.sha256(b).hexdigest(), len(b)) for rel, b in VNN_FILES.items()}


def test_vnncomp_download_checks_every_file_and_keeps_intact_ones(vnn_server, tmp_path):
    from bench.data import download_vnncomp
    folder = download_vnncomp(str(tmp_path), url=vnn_server + "/good/", files=_files(), progress=False)
    assert folder == str(tmp_path / "vnncomp2021")
    for rel, b in VNN_FILES.items():
        assert (tmp_path / "vnncomp2021" / rel).read_bytes() == b
    assert sorted(os.listdir(tmp_path / "vnncomp2021")) == ["acasxu", "eran"]   # no temporary folder left
    # intact files are kept: a server that now serves garbage is not even asked
    download_vnncomp(str(tmp_path), url="http://127.0.0.1:9/", files=_files(), progress=False)


@pytest.mark.parametrize("mode,words", [("bad", "has SHA-256"), ("cut", "stopped at"), ("gone", "failed")])
def test_vnncomp_bad_downloads_leave_nothing(vnn_server, tmp_path, mode, words):
    from bench.api import UserError
    from bench.data import download_vnncomp
    url = "http://127.0.0.1:9/" if mode == "gone" else f"{vnn_server}/{mode}/"
    with pytest.raises(UserError, match=words):
        download_vnncomp(str(tmp_path), url=url, files=_files(), progress=False)
    assert os.listdir(tmp_path / "vnncomp2021") == []   # not even the files that came whole


def test_vnncomp_command_is_one_line_on_a_bad_server(vnn_server, tmp_path):
    r = subprocess.run([sys.executable, "-m", "bench", "-q", "data", "vnncomp", "--data-dir", str(tmp_path),
                        "--url", vnn_server + "/good/"], cwd=REPO, capture_output=True, text=True, timeout=120)
    # the test server holds none of the real files: a 404, in one line, and nothing left
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "vnncomp" in r.stderr, r.stderr
    assert os.listdir(tmp_path / "vnncomp2021") == []
