"""`python dataset.py download` end to end against a local HTTP server serving tiny zips."""
import http.server
import subprocess
import sys
import threading
import zipfile

import pytest

import dataset
from conftest import ROOT, write_mit_folder


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files from the test's folder, honouring 'Range: bytes=N-' as a real server does."""
    requests = []

    def do_GET(self):
        path = self.translate_path(self.path)
        try:
            data = open(path, "rb").read()
        except OSError:
            return self.send_error(404)
        start = int(self.headers.get("Range", "bytes=0-")[6:].rstrip("-") or 0)
        RangeHandler.requests.append((self.path, start))
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """A loopback server of the two archives of a 3-image MIT-layout folder: its base URL."""
    source, served = tmp_path / "source", tmp_path / "served"
    write_mit_folder(source, ["a", "b", "c"])
    served.mkdir()
    for folder in (dataset.STIMULI, dataset.MAPS):
        with zipfile.ZipFile(served / f"{folder}.zip", "w") as zipped:
            for path in sorted((source / folder).iterdir()):
                zipped.write(path, f"{folder}/{path.name}")
            zipped.writestr(f"__MACOSX/{folder}/._junk", b"resource fork")
    handler = lambda *args: RangeHandler(*args, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    RangeHandler.requests = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    httpd.shutdown()
    httpd.server_close()


def test_download_unpacks_both_archives_into_the_layout_and_checks_it(tmp_path, server):
    url, _ = server
    out = tmp_path / "data" / "MIT1003"
    downloads = tmp_path / "cache" / "downloads"
    assert dataset.download_mit1003(out, url, expected_images=3, progress=False,
                                    downloads_dir=downloads) == 3
    names, _ = dataset.mit_layout_names(out)
    assert names == ["a", "b", "c"]
    assert not (out / "__MACOSX").exists() and not list(downloads.iterdir())
    assert sorted(p.name for p in out.iterdir()) == [dataset.MAPS, dataset.STIMULI]
    loaded = dataset.load_mit(out, "all", cache_dir=tmp_path / "cache", workers=1,
                              progress=False)
    assert len(loaded) == 3


def test_an_interrupted_download_continues_where_it_stopped(tmp_path, server):
    url, served = server
    out, downloads = tmp_path / "MIT1003", tmp_path / "downloads"
    whole = (served / "ALLSTIMULI.zip").read_bytes()
    downloads.mkdir()
    (downloads / "ALLSTIMULI.zip.part").write_bytes(whole[:100])  # a cut connection
    dataset.download_mit1003(out, url, expected_images=3, progress=False,
                             downloads_dir=downloads)
    assert ("/ALLSTIMULI.zip", 100) in RangeHandler.requests  # only the rest was fetched
    assert len(dataset.mit_layout_names(out)[0]) == 3


def test_a_count_other_than_expected_is_an_error(tmp_path, server):
    url, _ = server
    with pytest.raises(dataset.DatasetError, match="holds 3 images after unpacking, not 1003"):
        dataset.download_mit1003(tmp_path / "MIT1003", url, progress=False,
                                 downloads_dir=tmp_path / "downloads")


def test_offline_is_one_clear_line_with_a_manual_route(tmp_path, server):
    url, _ = server
    dead = url.rsplit(":", 1)[0] + ":9"  # the discard port: nothing listens there
    result = subprocess.run([sys.executable, str(ROOT / "dataset.py"), "download",
                             "--output-dir", str(tmp_path / "MIT1003"), "--url", dead],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "cannot download" in result.stderr and "by hand from" in result.stderr
    assert "kept in .cache/downloads" in result.stderr
    assert not (tmp_path / "MIT1003").exists()  # nothing to mistake for a dataset
