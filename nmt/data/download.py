"""Fetch named public corpora into a data directory.

Each corpus is a `Source` in `SOURCES`; `tatoeba` takes a language pair (`tatoeba_source`), any
language that manythings.org pairs with English. `download()` streams it over HTTPS to
`<file>.part` (resuming an interrupted transfer with a `Range` request), checks its size
and, when known, its SHA-256, extracts the wanted member of a zip/tar archive, and makes
the final file appear atomically. Every failure is a one-line `DataError`.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.metadata
import logging
import os
import shutil
import stat
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO
from urllib.parse import urlparse

from tqdm import tqdm

from nmt import languages
from nmt.errors import DataError, UsageError

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 16
TIMEOUT_S = 60.0
_BAR = {"unit": "B", "unit_scale": True, "unit_divisor": 1024}
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


@dataclass(frozen=True)
class Source:
    """A downloadable corpus.

    `filename` is the saved name under the destination directory; `member` the file
    to extract from a zip/tar archive (None if the URL is the plain file); `sha256` and
    `size` describe the file the URL serves (the archive, when `member` is set).
    """

    name: str
    url: str
    filename: str
    member: str | None
    sha256: str | None
    size: int | None
    description: str
    licence: str


TATOEBA_URL = "https://www.manythings.org/anki/{code}-eng.zip"  # code: ISO 639-3
SOURCES: dict[str, Source] = {
    "tatoeba": Source(
        name="tatoeba",
        url=TATOEBA_URL.format(code="por"),
        filename="tatoeba.en-pt.tsv",
        member="por.txt",
        sha256=None,  # updated regularly: only the Content-Length size is checked
        size=None,
        description="Tatoeba English-Portuguese sentence pairs (Anki export): "
        "English, Portuguese, attribution; --pair deu-eng (or --langs de,en) for another "
        "language with English",
        licence="CC-BY 2.0 France",
    ),
}
TATOEBA_DEFAULT = "por"  # the language `nmt data download tatoeba` pairs with English


def language_pair(pair: str | None, langs: str | None) -> tuple[str, ...] | None:
    """The codes of `--pair por-eng` or `--langs pt,en` (None when neither is given)."""
    if pair is not None and langs is not None:
        raise UsageError("--pair and --langs say the same: give one of them")
    if pair is not None:
        return tuple(pair.split("-"))
    return None if langs is None else tuple(c.strip() for c in langs.split(","))


def tatoeba_source(langs: tuple[str, ...]) -> Source:
    """The Tatoeba export (manythings.org) of a language with English, saved as
    `tatoeba.en-XX.tsv` (XX: the language's code in configs). `langs`: two codes, one of them
    English, two- or three-letter (`("pt", "en")`, `("por", "eng")`), in either order."""
    given = "-".join(langs)
    if len(langs) != 2 or not all(languages.is_code(c) for c in langs):
        raise UsageError(f"tatoeba language pair {given!r}: expected two language codes such "
                         f"as por-eng or pt,en")
    others = [c for c in langs if not languages.same(c, languages.ENGLISH)]
    if len(others) != 1:
        raise UsageError(f"tatoeba language pair {given!r}: manythings.org pairs one language "
                         f"with English; expected e.g. deu-eng")
    other = others[0].split("-")[0]  # a three-letter code as given: manythings says cmn, pes
    code = other if len(other) == 3 else languages.ISO1_TO_ISO3.get(other)
    if code is None or "-" in others[0]:
        raise UsageError(f"tatoeba language pair {given!r}: no three-letter code known for "
                         f"{others[0]!r}; give it as ISO 639-3, e.g. --pair deu-eng")
    if code == TATOEBA_DEFAULT:
        return SOURCES["tatoeba"]
    return replace(SOURCES["tatoeba"], url=TATOEBA_URL.format(code=code),
                   filename=f"tatoeba.en-{languages.canonical(code)}.tsv", member=f"{code}.txt",
                   sha256=None, size=None,
                   description=f"Tatoeba English-{code} sentence pairs (Anki export)")


def _user_agent() -> str:
    try:
        version = importlib.metadata.version("nmt")
    except importlib.metadata.PackageNotFoundError:
        version = "0"
    return f"nmt/{version}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def _check(path: Path, what: str, size: int | None, sha256: str | None) -> None:
    """Raise DataError if `path` has the wrong size or checksum."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise DataError(f"{what}: expected {size} bytes, got {actual}")
    if sha256 is not None and (digest := _sha256(path)) != sha256.lower():
        raise DataError(f"{what}: expected SHA-256 {sha256}, got {digest}")


def _write_atomic(stream: IO[bytes], final: Path) -> None:
    """Copy `stream` to a temp file beside `final`, fsync it, rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(stream, out, CHUNK_SIZE)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _unsafe(name: str) -> bool:
    norm = name.replace("\\", "/")
    return norm.startswith("/") or PureWindowsPath(name).drive != "" or ".." in norm.split("/")


def _refuse(what: str, member: str, unsafe: list[str], found: bool) -> None:
    if unsafe:
        raise DataError(f"{what}: refusing unsafe archive member {unsafe[0]!r}")
    if not found:
        raise DataError(f"{what}: expected a regular file {member!r} in the archive")


def _is_archive(path: Path) -> bool:
    return zipfile.is_zipfile(path) or tarfile.is_tarfile(path)


# How zip, gzip, bzip2 and xz files begin: a file that begins so but does not open as an
# archive is a damaged archive, never the plain member.
_ARCHIVE_MAGIC = (b"PK\x03\x04", b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


def _looks_like_archive(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(6).startswith(_ARCHIVE_MAGIC)


def _extract(archive: Path, member: str, final: Path, what: str) -> None:
    """Extract only `member` of a zip or tar archive to `final`; refuse unsafe entries."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            bad = [
                i.filename
                for i in infos
                if _unsafe(i.filename) or stat.S_ISLNK(i.external_attr >> 16)
            ]
            zinfo = next((i for i in infos if i.filename == member and not i.is_dir()), None)
            _refuse(what, member, bad, zinfo is not None)
            with zf.open(member) as src:
                _write_atomic(src, final)
    else:
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            bad = [i.name for i in members if _unsafe(i.name) or i.issym() or i.islnk()]
            tinfo = next((i for i in members if i.name == member and i.isfile()), None)
            _refuse(what, member, bad, tinfo is not None)
            with tf.extractfile(tinfo) as src:  # type: ignore[arg-type, union-attr]
                _write_atomic(src, final)


def _fetch(url: str, part: Path, progress: bool) -> int | None:
    """Stream `url` into `part`, resuming it if it exists; return the total size."""
    for _attempt in range(2):
        offset = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": _user_agent()}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            logger.info("resuming %s at byte %d", url, offset)
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                mode = "wb"
                if resp.status == 206:
                    crange = resp.headers.get("Content-Range", "")
                    spec, _, size = crange.removeprefix("bytes ").partition("/")
                    if spec.split("-")[0] != str(offset):  # not the range asked for
                        part.unlink(missing_ok=True)
                        continue
                    total, mode = (int(size) if size.isdigit() else None), "ab"
                else:
                    offset = 0  # the server ignored Range: restart from zero
                opts = {"desc": part.name.removesuffix(".part"), "disable": not progress}
                bar = tqdm(total=total, initial=offset, file=sys.stderr, **opts, **_BAR)
                with part.open(mode) as out, bar:
                    while chunk := resp.read(CHUNK_SIZE):
                        out.write(chunk)
                        bar.update(len(chunk))
                    out.flush()
                    os.fsync(out.fileno())
                return total
        except urllib.error.HTTPError as err:
            if err.code == 416 and offset:  # the .part does not fit the remote file
                part.unlink(missing_ok=True)
                continue
            raise DataError(f"{url}: HTTP {err.code} {err.reason}, expected the file") from err
        except _NETWORK_ERRORS as err:
            reason = getattr(err, "reason", None) or err.__class__.__name__
            raise DataError(
                f"download of {url} failed ({reason}); run the command again to resume"
            ) from err
        except OSError as err:
            raise DataError(f"{part}: cannot write the download ({err})") from err
    raise DataError(f"{url}: the server did not honour the byte range requested; try again")


def _install(src: Source, path: Path, final: Path, what: str, move: bool) -> None:
    """Check `path` and turn it into `final`: extract the member of an archive, else copy.

    A plain file where an archive was expected is taken as the member itself (a mirror of
    the extracted file); `size` and `sha256` then do not apply.
    """
    try:
        archive = src.member is not None and _is_archive(path)
        damaged = src.member is not None and not archive and _looks_like_archive(path)
        if src.member is None or archive or damaged:
            _check(path, what, src.size, src.sha256)
        if damaged:
            raise DataError(f"{what}: a damaged or incomplete archive (expected {src.member} "
                            f"in it); fetch it again")
        if src.member is not None and archive:
            logger.info("extracting %s from %s", src.member, what)
            _extract(path, src.member, final, what)
        elif move:
            os.replace(path, final)
        else:
            with path.open("rb") as f:
                _write_atomic(f, final)
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile, tarfile.TarError) as err:
        raise DataError(f"{what}: cannot unpack or save it as {final} ({err})") from err


def download(name: str, dest_dir: Path, source: str | None = None, progress: bool = True,
             langs: tuple[str, ...] | None = None) -> Path:
    """Fetch corpus `name` into `dest_dir` and return the path of its file.

    `source` replaces the registry URL: an http(s):// or file:// URL, or a local file or
    archive to copy. Plain http:// is only accepted when given explicitly as `source`.
    `langs`: the language pair of a corpus that takes one (tatoeba; default: its own).
    """
    src = SOURCES.get(name)
    if src is None:
        raise UsageError(f"unknown corpus {name!r}; known: {', '.join(sorted(SOURCES))}")
    if langs is not None and name != "tatoeba":
        raise UsageError(f"{name!r} has one language pair: --pair/--langs are for tatoeba")
    if langs is not None:
        src = tatoeba_source(langs)
    dest_dir = Path(dest_dir)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{dest_dir}: cannot create the directory ({err.strerror})") from err
    final = dest_dir / src.filename
    if final.is_file():
        if src.member is not None or src.sha256 is None or _sha256(final) == src.sha256.lower():
            logger.info("%s already present at %s", name, final)
            return final
        logger.warning("%s has the wrong checksum; downloading it again", final)
        final.unlink()

    url = source if source is not None else src.url
    parsed = urlparse(url)
    scheme = parsed.scheme.lower() if len(parsed.scheme) > 1 else ""  # "C:" is a drive
    if src.sha256 is None:  # a remote file's size is the one its server announces
        checked = ("its size only" if src.size is not None or scheme not in ("", "file")
                   else "only that it unpacks")
        logger.info("no SHA-256 is known for %s: checking %s", src.filename, checked)
    if scheme in ("", "file"):
        path = Path(urllib.request.url2pathname(parsed.path) if scheme else url).expanduser()
        if not path.is_file():
            raise DataError(f"{path}: expected an existing file or archive for {name!r}")
        logger.info("copying %s from %s", name, path)
        _install(src, path, final, str(path), move=False)
        return final
    if scheme not in ("http", "https") or (scheme == "http" and source is None):
        raise DataError(f"{url}: expected an https:// URL (http:// only via an explicit source)")

    archive_name = PurePosixPath(parsed.path).name or f"{src.name}.archive"
    fetched = dest_dir / f"{src.filename if src.member is None else archive_name}.part"
    logger.info("downloading %s from %s", name, url)
    total = _fetch(url, fetched, progress)
    actual = fetched.stat().st_size
    if total is not None and actual < total:
        raise DataError(
            f"download of {url} stopped at {actual} of {total} bytes; "
            "run the command again to resume"
        )
    try:
        _check(fetched, url, total, None)
        _install(src, fetched, final, url, move=True)
    finally:
        fetched.unlink(missing_ok=True)
    logger.info("saved %s to %s", name, final)
    return final
