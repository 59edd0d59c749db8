"""``latent-restore download``: the authors' released weights in one command.

Fetches the two release assets (``global_checkpoints.zip``, ``face_checkpoints.zip``), verifies and
converts them into the data folder's ``official`` set, which :func:`latent_restore.weights.resolve_weights`
then picks up without ``--weights``.

The transfer uses only the standard library (``urllib``, which honours ``https_proxy``,
``http_proxy`` and ``no_proxy``). A download is written to ``<name>.partial`` and renamed only
when complete, so an interrupted one never looks finished; the next run resumes it with an HTTP
``Range`` request. The checksums of the release are not published, so verification is: the size
the server announced, a zip that opens, and a conversion that recognises every expected network
(any tampering that keeps all of that would have to produce networks of exactly the released
shapes). The SHA-256 of each archive is recorded in the set's ``source.json`` for later checks.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import logging
import os
import re
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tqdm import tqdm

from latent_restore.convert import (
    EXPECTED_COMPONENTS,
    RELEASE_FILES,
    ConversionError,
    ReleaseKind,
    check_destination,
    convert_sources,
    open_source,
    write_weight_set,
)
from latent_restore.weights import Component, data_home, downloaded_weights_dir

logger = logging.getLogger(__name__)

DEFAULT_URL_BASE = "https://github.com/microsoft/Bringing-Old-Photos-Back-to-Life/releases/download/v1.0"
"""Where the authors publish the release assets (tag v1.0)."""

PARTIAL_SUFFIX = ".partial"
CHUNK_BYTES = 1 << 20
MAX_DOWNLOAD_BYTES = 4 << 30
"""Largest archive accepted from a server (the two releases are about 0.7 GB each)."""
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


class DownloadError(RuntimeError):
    """A download failed or was refused.

    Attributes:
        exit_code: 1 for transfer problems worth retrying (offline, interrupted), 2 for content
            refused (not a zip, an unsafe or incomplete archive).
        unreachable: the server could not be reached at all (offline, refused, no DNS, proxy down).
    """

    def __init__(self, message: str, exit_code: int = 1, unreachable: bool = False) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.unreachable = unreachable


def archive_url(url_base: str, kind: ReleaseKind) -> str:
    """``URL_BASE/global_checkpoints.zip`` or ``URL_BASE/face_checkpoints.zip``."""
    return f"{url_base.rstrip('/')}/{RELEASE_FILES[kind]}"


def manual_route(url_base: str, dest: Path) -> str:
    """What to do on a machine without internet access (said whenever the server cannot be reached)."""
    urls = " and ".join(archive_url(url_base, kind) for kind in ReleaseKind)
    return (
        f"Without internet access, download {urls} by hand (on another machine if need be), copy them "
        "here and run: latent-restore convert --official global_checkpoints.zip face_checkpoints.zip "
        f"--out {dest}"
    )


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url_base(url_base: str) -> None:
    """Only ``https`` (or ``http``, with a warning unless it is this machine) is fetched.

    Raises:
        DownloadError: any other scheme, or no host.
    """
    parts = urlsplit(url_base)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise DownloadError(f"--url-base must be an https:// (or http://) URL, got {url_base!r}", 2)
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        logger.warning("%s is not encrypted: what arrives is only checked by converting it", url_base)


class _NoDowngradeRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects (GitHub sends release assets elsewhere), but never from https to http."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if urlsplit(req.full_url).scheme == "https" and urlsplit(newurl).scheme != "https":
            raise DownloadError(f"refused: {req.full_url} redirects to the unencrypted {newurl}", 2)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener() -> urllib.request.OpenerDirector:
    # build_opener keeps the default handlers, ProxyHandler included (proxies from the environment).
    return urllib.request.build_opener(_NoDowngradeRedirect())


_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``(first byte, total size)`` of a ``Content-Range`` header (None where absent or ``*``)."""
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) else None
    total = int(match.group(3)) if match.group(3) != "*" else None
    return start, total


def _unreachable(url: str, reason: object) -> str:
    return f"cannot reach {urlsplit(url).netloc} for {url}: {reason}"


@dataclass(frozen=True)
class FetchResult:
    """What :func:`fetch` did.

    Attributes:
        path: the complete file.
        resumed_from: bytes already there from an interrupted download (0 if it started afresh).
        size: the file's size.
    """

    path: Path
    resumed_from: int
    size: int


def fetch(
    url: str, dest: str | os.PathLike[str], timeout: float = 60.0, progress: bool = True
) -> FetchResult:
    """Download ``url`` to ``dest``, resuming ``dest.partial`` from an earlier interrupted run.

    Raises:
        DownloadError: the server cannot be reached or answers an error, an HTML page instead of
            the file, a transfer that stops before the announced size (the partial file is kept
            for the next run), or a file above :data:`MAX_DOWNLOAD_BYTES`.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
    for _attempt in range(2):
        offset = partial.stat().st_size if partial.is_file() else 0
        try:
            return _fetch_once(url, dest, partial, offset, timeout, progress)
        except _StartOver as exc:
            logger.info("%s: %s; downloading it again from the start", url, exc)
            partial.unlink(missing_ok=True)
    raise DownloadError(f"{url}: the server does not answer a consistent size; try again later")


class _StartOver(Exception):
    """The partial file cannot be resumed (the server's file changed, or it ignores ranges)."""


def _fetch_once(
    url: str, dest: Path, partial: Path, offset: int, timeout: float, progress: bool
) -> FetchResult:
    headers = {"User-Agent": "latent-restore", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = _opener().open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        with contextlib.closing(exc):
            if exc.code == 416 and offset:
                _, total = _parse_content_range(exc.headers.get("Content-Range"))
                if total == offset:
                    os.replace(partial, dest)
                    return FetchResult(dest, offset, offset)
                raise _StartOver(f"the server cannot resume at byte {offset}") from None
            raise DownloadError(f"{url}: the server answered {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise DownloadError(_unreachable(url, exc.reason), unreachable=True) from exc
    except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as exc:
        raise DownloadError(_unreachable(url, exc), unreachable=True) from exc
    with response:
        content_type = response.headers.get("Content-Type", "")
        if "html" in content_type.lower():
            raise DownloadError(
                f"{url}: the server sent an HTML page ({content_type}), not a zip archive (an error, "
                "login or captive-portal page?)",
                2,
            )
        length = response.headers.get("Content-Length")
        remaining = int(length) if length and length.isdigit() else None
        if response.status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                raise _StartOver(f"asked for byte {offset}, the server sent from byte {start}")
            logger.info("%s: resuming at byte %d", url, offset)
        elif response.status == 200:
            if offset:
                raise _StartOver("the server does not resume partial downloads")
            total = remaining
        else:
            raise DownloadError(f"{url}: unexpected answer {response.status} {response.reason}")
        if total is None and remaining is not None:
            total = offset + remaining
        if total is not None and total > MAX_DOWNLOAD_BYTES:
            raise DownloadError(f"{url}: refused: announces {total} bytes, more than any release archive", 2)
        if total is None:
            logger.warning("%s: the server gives no size; completeness is checked by opening the zip", url)
        _stream(response, partial, offset, total, url, progress)
    size = partial.stat().st_size
    if total is not None and size != total:
        raise DownloadError(
            f"{url}: the transfer stopped at {size} of {total} bytes (kept as {partial}); run the same "
            "command again to resume"
        )
    os.replace(partial, dest)
    return FetchResult(dest, offset, size)


def _stream(
    response: http.client.HTTPResponse,
    partial: Path,
    offset: int,
    total: int | None,
    url: str,
    progress: bool,
) -> None:
    """Append the body to ``partial``, flushed to disk even when the transfer breaks off."""
    received = offset
    with (
        open(partial, "ab" if offset else "wb") as handle,
        tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=Path(urlsplit(url).path).name,
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        try:
            while True:
                try:
                    block = response.read(CHUNK_BYTES)
                except (http.client.HTTPException, TimeoutError, ConnectionError, OSError) as exc:
                    raise DownloadError(
                        f"{url}: the transfer broke off after {received} bytes "
                        f"({type(exc).__name__}: {exc}); kept as {partial}: run the same command again "
                        "to resume"
                    ) from exc
                if not block:
                    break
                if received == 0 and not _looks_like_zip(block[:4]):
                    handle.close()
                    partial.unlink(missing_ok=True)
                    what = "an HTML page" if block.lstrip()[:1] == b"<" else "something else"
                    raise DownloadError(f"{url}: the server sent {what}, not a zip archive", 2)
                received += len(block)
                if received > MAX_DOWNLOAD_BYTES:
                    handle.close()
                    partial.unlink(missing_ok=True)
                    raise DownloadError(f"{url}: refused: sends more than {MAX_DOWNLOAD_BYTES} bytes", 2)
                handle.write(block)
                bar.update(len(block))
        finally:
            if not handle.closed:
                handle.flush()
                os.fsync(handle.fileno())


def _looks_like_zip(head: bytes) -> bool:
    """Whether the first bytes of a file can start a zip archive (a short read checks a prefix)."""
    return any(magic[: len(head)] == head for magic in ZIP_MAGIC)


@dataclass(frozen=True)
class DownloadResult:
    """What :func:`download_release` wrote.

    Attributes:
        weights_dir: the converted set.
        components: its component directories.
        archives: SHA-256 of each downloaded archive, by file name.
        resumed: archives whose download resumed an earlier partial file.
    """

    weights_dir: Path
    components: dict[Component, Path]
    archives: dict[str, str]
    resumed: list[str]


def download_release(
    dest: str | os.PathLike[str] | None = None,
    url_base: str = DEFAULT_URL_BASE,
    only: ReleaseKind | None = None,
    keep_archives: bool = False,
    archive_dir: str | os.PathLike[str] | None = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> DownloadResult:
    """Download, verify and convert the release archives into a weights set.

    Args:
        dest: the weights directory (default :func:`~latent_restore.weights.downloaded_weights_dir`,
            which the resolver uses without ``--weights``). A set already there is replaced whole.
        url_base: the archives are fetched as ``URL_BASE/global_checkpoints.zip`` and
            ``URL_BASE/face_checkpoints.zip``.
        only: fetch one archive; the components of the other one already in ``dest`` are kept.
        keep_archives: keep the zips (otherwise deleted once converted).
        archive_dir: where the zips are downloaded (default ``<data folder>/downloads``); an
            interrupted download is resumed from here.
        timeout: seconds without data before a connection counts as broken.
        progress: show tqdm progress bars.

    Raises:
        DownloadError: a transfer problem (see :func:`fetch`), with the manual route when the
            server cannot be reached.
        ConversionError: an archive refused (unsafe member, unknown network, incomplete, ...).
            In every failure the weights set at ``dest`` is left as it was.
    """
    check_url_base(url_base)
    dest = Path(dest) if dest is not None else downloaded_weights_dir()
    archive_dir = Path(archive_dir) if archive_dir is not None else data_home() / "downloads"
    check_destination(dest, overwrite=True)
    kinds = [only] if only is not None else list(ReleaseKind)
    try:
        return _download(dest, url_base, kinds, only, keep_archives, archive_dir, timeout, progress)
    finally:
        with contextlib.suppress(OSError):
            archive_dir.rmdir()  # only when empty: nothing was kept, no partial download to resume


def _download(
    dest: Path,
    url_base: str,
    kinds: list[ReleaseKind],
    only: ReleaseKind | None,
    keep_archives: bool,
    archive_dir: Path,
    timeout: float,
    progress: bool,
) -> DownloadResult:
    archives: dict[ReleaseKind, Path] = {}
    resumed = []
    for kind in kinds:
        url = archive_url(url_base, kind)
        path = archive_dir / RELEASE_FILES[kind]
        if path.is_file():
            logger.info("using %s, downloaded earlier", path)
        else:
            logger.info("downloading %s", url)
            try:
                result = fetch(url, path, timeout=timeout, progress=progress)
            except DownloadError as exc:
                if exc.unreachable:
                    message = f"{exc}\n{manual_route(url_base, dest)}"
                    raise DownloadError(message, exc.exit_code, unreachable=True) from exc
                raise
            if result.resumed_from:
                resumed.append(path.name)
        with _discard_if_refused(path, keep_archives):
            _check_archive(path, kind)
        archives[kind] = path
    with contextlib.ExitStack() as stack:
        sources, converted = [], {}
        for path in archives.values():
            with _discard_if_refused(path, keep_archives):
                source = open_source(path, stack)
                part = convert_sources([source], require_complete=True)
                clash = sorted(c.value for c in part.keys() & converted.keys())
                if clash:
                    raise ConversionError(f"{path} gives {', '.join(clash)} again")
            sources.append(source)
            converted.update(part)
        provenance = {
            "downloaded": {
                source.path.name: {"url": archive_url(url_base, kind), "sha256": source.sha256}
                for kind, source in zip(archives, sources, strict=True)
            }
        }
        carry = _kept_components(dest, only)
        written = write_weight_set(converted, dest, overwrite=True, provenance=provenance, carry=carry)
    hashes = {source.path.name: str(source.sha256) for source in sources}
    if not keep_archives:
        for path in archives.values():
            path.unlink(missing_ok=True)
    return DownloadResult(dest, written, hashes, resumed)


@contextlib.contextmanager
def _discard_if_refused(path: Path, keep: bool) -> Iterator[None]:
    """Delete a complete download whose content is refused, so that a rerun fetches it anew."""
    try:
        yield
    except (ConversionError, DownloadError):
        if not keep:
            path.unlink(missing_ok=True)
            logger.info("deleted the refused %s", path)
        raise


def _check_archive(path: Path, kind: ReleaseKind) -> None:
    """Right after its transfer: the archive opens, its members are safe, and it is the release asked for.

    Raises:
        DownloadError: not a zip (exit code 2).
        ConversionError: unsafe members, or members of the other release.
    """
    if not zipfile.is_zipfile(path):
        raise DownloadError(f"{path}: the download is complete but is not a readable zip archive", 2)
    with contextlib.ExitStack() as stack:
        source = open_source(path, stack, digest=False)
    if source.kinds != {kind}:
        found = " and ".join(sorted(k.value for k in source.kinds))
        raise ConversionError(
            f"{path}: holds {found} checkpoints, not those of {RELEASE_FILES[kind]} (told by its members)"
        )


def _kept_components(dest: Path, only: ReleaseKind | None) -> dict[Component, Path]:
    """With ``--only``, the components of the other archive already in ``dest`` (kept, not refetched)."""
    if only is None or not dest.is_dir():
        return {}
    kept = {}
    for kind in ReleaseKind:
        if kind is only:
            continue
        for component in sorted(EXPECTED_COMPONENTS[kind], key=lambda c: c.value):
            if (dest / component.value / "config.json").is_file():
                kept[component] = dest / component.value
    if kept:
        logger.info("keeping %s from the earlier download", ", ".join(c.value for c in kept))
    return kept
