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
