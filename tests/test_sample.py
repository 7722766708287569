"""Tests of the sample locator and downloader against a loopback HTTP server."""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from covidct import sample
from covidct.sample import SampleError, fetch_sample, find_sample, verify_sample


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Callable[[Path], str]]:
    """Serve a folder on 127.0.0.1 and return its base URL."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(folder: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/P002"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def served_copy(p002_dir: Path, tmp_path: Path) -> Path:
    """Copy of P002 laid out as served: <root>/P002/<file name>."""
    root = tmp_path / "served"
    shutil.copytree(p002_dir, root / "P002")
    return root


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def test_manifest_matches_shared_copy(p002_dir: Path) -> None:
    manifest = sample.load_manifest()
    assert len(manifest) == 133
    assert len({entry.name for entry in manifest}) == 133
    verify_sample(p002_dir)


def test_fetch_downloads_and_verifies(
    served_copy: Path, serve: Callable[[Path], str], tmp_path: Path
) -> None:
    dest = tmp_path / "dest" / "P002"
    result = fetch_sample(dest, serve(served_copy))

    assert result == dest
    expected_names = sorted(entry.name for entry in sample.load_manifest())
    assert _leftovers(dest) == expected_names
    assert _leftovers(dest.parent) == ["P002"]
    verify_sample(dest)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1])


def _append_byte(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"\0")


@pytest.mark.parametrize(
    ("corrupt", "expected_text"),
    [
        (_flip_byte, "SHA-256"),
        (_truncate, "bytes, expected"),
        (_append_byte, "more than"),
    ],
    ids=["flipped-byte", "truncated", "extra-byte"],
)
def test_fetch_rejects_corrupt_file(
    served_copy: Path,
    serve: Callable[[Path], str],
    tmp_path: Path,
    corrupt: Callable[[Path], None],
    expected_text: str,
) -> None:
    entry = sample.load_manifest()[66]
    corrupt(served_copy / "P002" / entry.name)
    dest = tmp_path / "dest" / "P002"
    url = serve(served_copy)

    with pytest.raises(SampleError) as caught:
        fetch_sample(dest, url)

    message = str(caught.value)
    assert f"{url}/{entry.name}" in message
    assert expected_text in message
    assert "nothing was written" in message
    assert not dest.exists()
    assert _leftovers(dest.parent) == []


def test_fetch_mismatch_shows_both_digests(
    served_copy: Path, serve: Callable[[Path], str], tmp_path: Path
) -> None:
    entry = sample.load_manifest()[0]
    served_file = served_copy / "P002" / entry.name
    _flip_byte(served_file)
    received = hashlib.sha256(served_file.read_bytes()).hexdigest()

    with pytest.raises(SampleError) as caught:
        fetch_sample(tmp_path / "dest" / "P002", serve(served_copy))

    assert entry.sha256 in str(caught.value)
    assert received in str(caught.value)


def test_fetch_reports_missing_file(
    served_copy: Path, serve: Callable[[Path], str], tmp_path: Path
) -> None:
    entry = sample.load_manifest()[-1]
    (served_copy / "P002" / entry.name).unlink()
    dest = tmp_path / "dest" / "P002"

    with pytest.raises(SampleError, match="HTTP 404"):
        fetch_sample(dest, serve(served_copy))
    assert _leftovers(dest.parent) == []


def test_fetch_reports_closed_port_quickly(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/P002"
    dest = tmp_path / "dest" / "P002"

    started = time.monotonic()
    with pytest.raises(SampleError) as caught:
        fetch_sample(dest, url)
    elapsed = time.monotonic() - started

    assert url in str(caught.value)
    assert "failed" in str(caught.value)
    assert elapsed < 5.0
    assert _leftovers(dest.parent) == []


def test_fetch_times_out_on_silent_server(tmp_path: Path) -> None:
    # The socket listens but never accepts, so the request gets no response.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/P002"
        dest = tmp_path / "dest" / "P002"

        started = time.monotonic()
        with pytest.raises(SampleError, match="timed out"):
            fetch_sample(dest, url, timeout=0.5)
        elapsed = time.monotonic() - started

    assert elapsed < 5.0
    assert _leftovers(dest.parent) == []


def test_fetch_reuses_verified_destination(p002_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "P002"
    shutil.copytree(p002_dir, dest)
    # A closed port proves that no request is made.
    url = f"http://127.0.0.1:{_closed_port()}/P002"

    assert fetch_sample(dest, url) == dest


def test_fetch_keeps_invalid_destination(p002_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "P002"
    shutil.copytree(p002_dir, dest)
    _flip_byte(dest / "IM0010.dcm")
    before = (dest / "IM0010.dcm").read_bytes()

    with pytest.raises(SampleError, match="not a valid copy"):
        fetch_sample(dest, f"http://127.0.0.1:{_closed_port()}/P002")
    assert (dest / "IM0010.dcm").read_bytes() == before


def test_fetch_rejects_non_http_url(tmp_path: Path) -> None:
    with pytest.raises(SampleError, match="http or https"):
        fetch_sample(tmp_path / "P002", "file:///etc")
    assert _leftovers(tmp_path) == []


def test_fetch_without_url_explains_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(sample.URL_ENV, raising=False)
    monkeypatch.setattr(sample, "DEFAULT_SAMPLE_URL", None)

    with pytest.raises(SampleError, match=sample.URL_ENV):
        fetch_sample(tmp_path / "P002")


def test_find_prefers_data_folder(
    p002_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    shutil.copytree(p002_dir, data / "covid-ct-md" / "P002")
    monkeypatch.setenv(sample.DATA_ENV, str(data))

    assert find_sample() == data / "covid-ct-md" / "P002"


def test_find_skips_invalid_data_folder(
    p002_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = tmp_path / "data"
    copy = data / "covid-ct-md" / "P002"
    shutil.copytree(p002_dir, copy)
    (copy / "IM0005.dcm").unlink()
    monkeypatch.setenv(sample.DATA_ENV, str(data))

    found = find_sample()

    assert found is not None
    assert found.resolve() == p002_dir.resolve()
    assert "missing file IM0005.dcm" in caplog.text


def test_find_returns_none_without_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(sample.DATA_ENV, str(tmp_path / "empty"))
    monkeypatch.setattr(sample, "_shared_sample_dir", lambda: None)

    assert find_sample() is None


def test_main_prints_found_folder(
    p002_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(sample.DATA_ENV, str(tmp_path / "empty"))

    assert sample.main([]) == 0
    assert Path(capsys.readouterr().out.strip()).resolve() == p002_dir.resolve()
