"""`ragcli data fetch` against a local HTTP server (with Range support) and a file:// URL: checksum,
resume, unpacking. No test touches the internet."""

import hashlib
import http.server
import io
import json
import threading
import zipfile

import pytest
from click.testing import CliRunner

from cli import ragcli
from indexes import UserError
from recsys import fetch as fetch_module
from recsys.data import read_interactions
from recsys.fetch import Archive, fetch


def make_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("ml-100k/u.data", "".join(f"{u}\t{i}\t4\t{t}\n" for t, (u, i) in enumerate(
            [(1, 10), (1, 11), (1, 12), (2, 10), (2, 12), (2, 13)])))
        archive.writestr("ml-100k/u.item", "10|Heat (1995)|||x|" + "|".join(["0"] * 19) + "\n")
        archive.writestr("ml-100k/README", "a tiny stand-in\n" * 500)  # makes the file worth resuming
    return buffer.getvalue()


PAYLOAD = make_zip()
SHA = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at any path, honouring `Range: bytes=N-`; records the ranges asked for."""

    ranges: list = []

    def do_GET(self):
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
        self.ranges.append(start)
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    RangeHandler.ranges = []
    httpd = http.server.HTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/ml-100k.zip"
    httpd.shutdown()


def test_fetch_downloads_verifies_and_unpacks(server, tmp_path, monkeypatch):
    monkeypatch.setitem(fetch_module.DATASETS, "ml-100k", Archive(server, SHA))
    folder = fetch("ml-100k", tmp_path)
    assert folder == tmp_path / "ml-100k" and (folder / "u.data").is_file()
    raw = read_interactions(folder)
    assert raw.interactions.height == 6 and raw.items["title"].to_list() == ["Heat (1995)"]
    assert not list(tmp_path.glob("*.part"))


def test_fetch_resumes_a_partial_download(server, tmp_path, monkeypatch):
    monkeypatch.setitem(fetch_module.DATASETS, "ml-100k", Archive(server, SHA))
    (tmp_path / "ml-100k.zip.part").write_bytes(PAYLOAD[:1000])
    assert (fetch("ml-100k", tmp_path) / "u.data").is_file()
    assert RangeHandler.ranges == [1000]


def test_checksum_mismatch_is_refused(server, tmp_path, monkeypatch):
    monkeypatch.setitem(fetch_module.DATASETS, "ml-100k", Archive(server, "sha256:" + "0" * 64))
    with pytest.raises(UserError, match="checksum mismatch"):
        fetch("ml-100k", tmp_path)
    assert not (tmp_path / "ml-100k").exists() and not list(tmp_path.glob("*.part"))


def test_file_url_through_the_cli(tmp_path, monkeypatch):
    source = tmp_path / "ml-100k.zip"
    source.write_bytes(PAYLOAD)
    monkeypatch.setitem(fetch_module.DATASETS, "ml-100k", Archive(source.as_uri(), SHA))
    result = CliRunner().invoke(ragcli, ["data", "fetch", "ml-100k", "--dir", str(tmp_path / "data"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"dataset": "ml-100k", "path": str(tmp_path / "data" / "ml-100k")}
    stats = CliRunner().invoke(ragcli, ["data", "stats", str(tmp_path / "data" / "ml-100k"), "--json"])
    assert json.loads(stats.output)["interactions"] == 6


def test_unreachable_server_and_unknown_name(tmp_path, monkeypatch):
    monkeypatch.setitem(fetch_module.DATASETS, "ml-100k", Archive("http://127.0.0.1:9/ml-100k.zip", SHA))
    with pytest.raises(UserError, match="cannot download"):
        fetch("ml-100k", tmp_path)
    result = CliRunner().invoke(ragcli, ["data", "fetch", "ml-5m"])
    assert result.exit_code == 2
