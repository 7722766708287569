"""Locate, download and verify the demo CT: series P002 of COVID-CT-MD.

The series is 133 DICOM files (JPEG Lossless) of a COVID-19 patient from
COVID-CT-MD (Afshar et al., Scientific Data 8:121, 2021). The file names,
sizes and SHA-256 digests of the published files are stored in
``sample_manifest.json`` next to this module, and every copy is checked
against them before use.

Lookup order of :func:`find_sample`:

1. ``$COVIDCT_DATA/covid-ct-md/P002``, where ``$COVIDCT_DATA`` defaults to
   ``$XDG_CACHE_HOME/covidct`` or ``~/.cache/covidct``;
2. ``../shared/data/covid-ct-md/P002`` beside a source checkout of covidct.

:func:`fetch_sample` downloads one file per manifest entry from
``<base URL>/<file name>``, verifies each one and moves the complete folder
into place with a single rename, so the destination never contains a partial
copy.

Run ``python -m covidct.sample`` to print the folder of a verified copy,
downloading one first when none is found.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import logging
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from covidct import __version__
from covidct.errors import CovidctError

__all__ = [
    "DATA_ENV",
    "DEFAULT_SAMPLE_URL",
    "REQUEST_TIMEOUT_S",
    "URL_ENV",
    "SampleError",
    "SampleFile",
    "data_dir",
    "default_sample_dir",
    "fetch_sample",
    "find_sample",
    "load_manifest",
    "sample_candidates",
    "verify_sample",
]

logger = logging.getLogger(__name__)

DATA_ENV = "COVIDCT_DATA"
URL_ENV = "COVIDCT_SAMPLE_URL"

# TODO: no URL is known that serves the slices of P002 one by one from the
# published figshare collection 5129081 of COVID-CT-MD, so there is no default
# and a download needs --url or COVIDCT_SAMPLE_URL (see docs/data.md).
DEFAULT_SAMPLE_URL: str | None = None

# Seconds allowed for connecting and for each read of a response. urllib
# applies the limit per socket operation, so a server that keeps sending a
# few bytes within each limit can make one file take longer than this.
REQUEST_TIMEOUT_S = 30.0

_SAMPLE_PARTS = ("covid-ct-md", "P002")
_MANIFEST_NAME = "sample_manifest.json"
_CHUNK_BYTES = 1 << 20
_ALLOWED_SCHEMES = ("http", "https")
# urllib raises URLError and HTTPError (both OSError), a bare TimeoutError
# while waiting for the status line, and http.client errors for bad responses.
_NETWORK_ERRORS = (OSError, http.client.HTTPException)


class SampleError(CovidctError):
    """The sample series cannot be found, downloaded or verified."""


@dataclass(frozen=True)
class SampleFile:
    """One file of the sample series as published.

    Attributes:
        name: File name inside the series folder, e.g. ``IM0001.dcm``.
        size: Size in bytes.
        sha256: SHA-256 digest of the content, lowercase hexadecimal.
    """

    name: str
    size: int
    sha256: str


def load_manifest() -> tuple[SampleFile, ...]:
    """Read the names, sizes and SHA-256 digests of the sample files."""
    text = resources.files("covidct").joinpath(_MANIFEST_NAME).read_text("utf-8")
    entries = json.loads(text)["files"]
    return tuple(
        SampleFile(name=entry["name"], size=entry["size"], sha256=entry["sha256"])
        for entry in entries
    )


def data_dir() -> Path:
    """Return the covidct data folder.

    It is ``$COVIDCT_DATA`` when set, else ``$XDG_CACHE_HOME/covidct``, else
    ``~/.cache/covidct``. The folder is not created here.
    """
    configured = os.environ.get(DATA_ENV)
    if configured:
        return Path(configured).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME")
    if cache_home:
        return Path(cache_home).expanduser() / "covidct"
    return Path.home() / ".cache" / "covidct"


def default_sample_dir() -> Path:
    """Return the folder that :func:`fetch_sample` downloads into by default."""
    return data_dir().joinpath(*_SAMPLE_PARTS)


def _shared_sample_dir() -> Path | None:
    # Only a source checkout (src/covidct/sample.py under a folder containing
    # pyproject.toml) has a meaningful "beside the repository" location.
    repo_root = Path(__file__).resolve().parents[2]
    if not (repo_root / "pyproject.toml").is_file():
        return None
    return repo_root.parent.joinpath("shared", "data", *_SAMPLE_PARTS)


def sample_candidates() -> list[Path]:
    """List the folders that :func:`find_sample` checks, in lookup order."""
    candidates = [default_sample_dir()]
    shared = _shared_sample_dir()
    if shared is not None:
        candidates.append(shared)
    return candidates


def _sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sample(folder: Path, manifest: Sequence[SampleFile] | None = None) -> None:
    """Check that a folder contains every sample file with its published content.

    Files that are not in the manifest are ignored.

    Args:
        folder: Series folder to check.
        manifest: Expected files, by default those of :func:`load_manifest`.

    Raises:
        SampleError: On the first file that is missing, has another size or
            has another SHA-256 digest.
    """
    files = load_manifest() if manifest is None else manifest
    for expected in files:
        path = folder / expected.name
        if not path.is_file():
            raise SampleError(f"missing file {expected.name}", path=folder)
        size = path.stat().st_size
        if size != expected.size:
            raise SampleError(
                f"{expected.name} is {size} bytes, expected {expected.size}",
                path=folder,
            )
        digest = _sha256_of_file(path)
        if digest != expected.sha256:
            raise SampleError(
                f"SHA-256 of {expected.name} is {digest}, expected {expected.sha256}",
                path=folder,
            )


def find_sample() -> Path | None:
    """Return the first verified copy of the sample series, or None.

    The folders of :func:`sample_candidates` are checked in order. A folder
    that exists but fails :func:`verify_sample` is skipped with a warning.
    """
    for candidate in sample_candidates():
        if not candidate.is_dir():
            logger.debug("No sample series at %s", candidate)
            continue
        try:
            verify_sample(candidate)
        except SampleError as error:
            logger.warning("Skipping an invalid copy of the sample series: %s", error)
            continue
        return candidate
    return None


def _resolve_base_url(base_url: str | None) -> str:
    url = base_url or os.environ.get(URL_ENV) or DEFAULT_SAMPLE_URL
    if not url:
        raise SampleError(
            "no download URL is configured for the sample series",
            hint=(
                f"pass --url or set {URL_ENV} to a URL under which each file of "
                f"COVID-CT-MD series P002 is served by name (<URL>/IM0001.dcm), "
                f"or copy the series into {default_sample_dir()} "
                f"(the folder follows {DATA_ENV}); see docs/data.md"
            ),
        )
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in _ALLOWED_SCHEMES:
        raise SampleError(
            f"invalid sample URL {url!r}: the scheme must be http or https",
            hint=f"pass an http(s) URL with --url or {URL_ENV}",
        )
    return url.rstrip("/")


def _failure_reason(error: Exception, timeout: float) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        if isinstance(error.reason, TimeoutError):
            return f"timed out after {timeout:g} s"
        return str(error.reason)
    if isinstance(error, TimeoutError):
        return f"timed out after {timeout:g} s"
    return str(error) or type(error).__name__


def _download_failure(url: str, reason: str) -> SampleError:
    return SampleError(
        f"download of {url} failed: {reason}",
        hint=(
            f"check the network connection and the URL (--url or {URL_ENV}), "
            "then run the command again; nothing was written to the destination"
        ),
    )


def _download_file(
    url: str, target: Path, expected: SampleFile, timeout: float
) -> None:
    """Download one file into ``target`` and check its size and SHA-256 digest."""
    request = urllib.request.Request(
        url, headers={"User-Agent": f"covidct/{__version__}"}
    )
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except _NETWORK_ERRORS as error:
        raise _download_failure(url, _failure_reason(error, timeout)) from error

    digest = hashlib.sha256()
    size = 0
    with response, target.open("wb") as output:
        while True:
            try:
                chunk = response.read(_CHUNK_BYTES)
            except _NETWORK_ERRORS as error:
                reason = _failure_reason(error, timeout)
                raise _download_failure(url, reason) from error
            if not chunk:
                break
            size += len(chunk)
            if size > expected.size:
                raise _mismatch(url, expected, f"more than {expected.size} bytes")
            digest.update(chunk)
            output.write(chunk)

    if size != expected.size:
        raise _mismatch(url, expected, f"{size} bytes, expected {expected.size}")
    received = digest.hexdigest()
    if received != expected.sha256:
        raise _mismatch(
            url, expected, f"SHA-256 {received}, expected {expected.sha256}"
        )


def _mismatch(url: str, expected: SampleFile, detail: str) -> SampleError:
    return SampleError(
        f"{expected.name} downloaded from {url} does not match the published "
        f"file: got {detail}",
        hint=(
            "the server returned another file than COVID-CT-MD series P002 as "
            f"published; point --url or {URL_ENV} at an unmodified copy and run "
            "the command again; nothing was written to the destination"
        ),
    )


def fetch_sample(
    dest: Path | None = None,
    base_url: str | None = None,
    *,
    timeout: float = REQUEST_TIMEOUT_S,
) -> Path:
    """Download the sample series, verify every file and move it into place.

    Each file is requested from ``<base_url>/<file name>``. The files go to a
    temporary folder beside ``dest``, which is renamed to ``dest`` only after
    all of them match the manifest. On any failure the temporary folder is
    removed. A ``dest`` that already contains a verified copy is returned
    without any request.

    Args:
        dest: Series folder to create; defaults to :func:`default_sample_dir`.
        base_url: http(s) URL of the folder serving the files; defaults to
            ``$COVIDCT_SAMPLE_URL``, then to :data:`DEFAULT_SAMPLE_URL`.
        timeout: Seconds allowed for connecting and for each read.

    Returns:
        The verified series folder, ``dest``.

    Raises:
        SampleError: No URL is configured, the URL is not http(s), ``dest``
            exists with other content, a request fails or times out, a file
            does not match the manifest, or ``dest`` cannot be written.
    """
    target = default_sample_dir() if dest is None else Path(dest)
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    if target.exists():
        try:
            verify_sample(target)
        except SampleError as error:
            raise SampleError(
                f"the destination exists but is not a valid copy: {error.message}",
                path=target,
                hint="delete the folder or choose another destination (--dest)",
            ) from error
        logger.info("The sample series is already present at %s", target)
        return target

    url = _resolve_base_url(base_url)
    manifest = load_manifest()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(
            tempfile.mkdtemp(
                prefix=f".{target.name}.", suffix=".partial", dir=target.parent
            )
        )
    except OSError as error:
        raise SampleError(
            f"failed to create the destination folder: {error}",
            path=target.parent,
            hint="choose a writable destination with --dest or COVIDCT_DATA",
        ) from error

    logger.info("Downloading %d files of the sample series from %s", len(manifest), url)
    renamed = False
    try:
        for entry in manifest:
            file_url = f"{url}/{urllib.parse.quote(entry.name)}"
            logger.debug("Downloading %s", file_url)
            _download_file(file_url, partial / entry.name, entry, timeout)
        os.rename(partial, target)
        renamed = True
    except OSError as error:
        raise SampleError(
            f"failed to write the sample series: {error}",
            path=target,
            hint="check free disk space and permissions, or choose another --dest",
        ) from error
    finally:
        if not renamed:
            shutil.rmtree(partial, ignore_errors=True)

    logger.info("Verified %d files in %s", len(manifest), target)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """Print the folder of a verified sample series, downloading it if needed."""
    parser = argparse.ArgumentParser(
        prog="python -m covidct.sample",
        description=(
            "Print the folder of the demo CT series (COVID-CT-MD P002). "
            "Without options, a verified local copy is used when one exists."
        ),
    )
    parser.add_argument(
        "--dest",
        type=Path,
        help=(
            f"series folder to download into (default: {default_sample_dir()}, "
            f"which follows {DATA_ENV})"
        ),
    )
    parser.add_argument(
        "--url",
        help=f"http(s) URL of a folder serving the series files (default: {URL_ENV})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    try:
        found = None
        if args.dest is None and args.url is None:
            found = find_sample()
        path = found or fetch_sample(args.dest, args.url)
    except SampleError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
