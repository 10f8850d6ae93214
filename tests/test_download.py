"""Tests for nmt.data.download against a local HTTP server on 127.0.0.1, and of
`nmt data download tatoeba` from a local mirror."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from nmt.cli import app
from nmt.config import CorpusConfig
from nmt.data import download as dl
from nmt.data.corpus import ReadStats, read_corpus
from nmt.errors import DataError, UsageError

from conftest import ROOT, TINY_CORPUS

runner = CliRunner()

ATTR = "CC-BY 2.0 (France) Attribution: tatoeba.org #{} (alice) & #{} (bruno)"
PAIRS = [
    ("Hello.", "Olá."),
    ("I like green tea.", "Eu gosto de chá verde."),
    ("Where is the station?", "Onde fica a estação?"),
    ("The cat sleeps on the warm stone.", "O gato dorme na pedra quente."),
]
CORPUS = "".join(
    f"{en}\t{pt}\t{ATTR.format(2 * i + 1, 2 * i + 2)}\n" for i, (en, pt) in enumerate(PAIRS)
).encode()


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    honour_range: bool = True
    cut_after: int | None = None  # send only this many body bytes, once, then hang up
    requests: list[dict[str, str]] = field(default_factory=list)


class RangeHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        state.requests.append({k.lower(): v for k, v in self.headers.items()})
        data = state.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match and state.honour_range:
            start = int(match[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if state.cut_after is not None:
            body, state.cut_after = body[: state.cut_after], None
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    httpd.state = ServerState()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        state: ServerState = httpd.state  # type: ignore[attr-defined]
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def make_zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        zf.writestr("_about.txt", "Made-up test sentences.\n")
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def make_tar(members: list[tarfile.TarInfo], payload: bytes = CORPUS) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for info in members:
            if info.isfile():
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
            else:
                tf.addfile(info)
    return buf.getvalue()


def use_source(monkeypatch: pytest.MonkeyPatch, **changes: object) -> dl.Source:
    fields = {
        "name": "test",
        "url": "https://example.invalid/por-eng.zip",
        "filename": "test.en-pt.tsv",
        "member": "por.txt",
        "sha256": None,
        "size": None,
        "description": "made-up pairs",
        "licence": "CC0",
    }
    fields.update(changes)
    src = dl.Source(**fields)  # type: ignore[arg-type]
    monkeypatch.setitem(dl.SOURCES, "test", src)
    return src


def test_plain_download_and_extraction(tmp_path, server, monkeypatch) -> None:
    url, state = server
    state.files["/por-eng.zip"] = make_zip({"por.txt": CORPUS})
    use_source(monkeypatch)
    dest = tmp_path / "data"
    out = dl.download("test", dest, source=f"{url}/por-eng.zip", progress=False)
    assert out == dest / "test.en-pt.tsv"
    assert out.read_bytes() == CORPUS
    assert sorted(p.name for p in dest.iterdir()) == ["test.en-pt.tsv"]  # archive deleted
    assert state.requests[0]["user-agent"].startswith("nmt/")
    assert "range" not in state.requests[0]


def test_plain_file_with_matching_checksum(tmp_path, server, monkeypatch) -> None:
    url, state = server
    state.files["/corpus.tsv"] = CORPUS
    use_source(
        monkeypatch,
        member=None,
        sha256=hashlib.sha256(CORPUS).hexdigest(),
        size=len(CORPUS),
    )
    out = dl.download("test", tmp_path, source=f"{url}/corpus.tsv", progress=False)
    assert out.read_bytes() == CORPUS
    assert [p.name for p in tmp_path.iterdir()] == ["test.en-pt.tsv"]


@pytest.mark.parametrize("honour_range", [True, False])
def test_interrupted_download_resumes(tmp_path, server, monkeypatch, honour_range) -> None:
    url, state = server
    archive = make_zip({"por.txt": CORPUS})
    state.files["/por-eng.zip"] = archive
    state.cut_after = len(archive) // 2
    use_source(monkeypatch)
    with pytest.raises(DataError, match="again"):
        dl.download("test", tmp_path, source=f"{url}/por-eng.zip", progress=False)
    part = tmp_path / "por-eng.zip.part"
    assert part.read_bytes() == archive[: len(archive) // 2]
    assert not (tmp_path / "test.en-pt.tsv").exists()

    state.honour_range = honour_range
    out = dl.download("test", tmp_path, source=f"{url}/por-eng.zip", progress=False)
    assert state.requests[-1]["range"] == f"bytes={len(archive) // 2}-"
    assert out.read_bytes() == CORPUS
    assert not part.exists()


def test_oversized_part_restarts_from_zero(tmp_path, server, monkeypatch) -> None:
    url, state = server
    archive = make_zip({"por.txt": CORPUS})
    state.files["/por-eng.zip"] = archive
    use_source(monkeypatch)
    (tmp_path / "por-eng.zip.part").write_bytes(b"junk" * len(archive))
    out = dl.download("test", tmp_path, source=f"{url}/por-eng.zip", progress=False)
    assert out.read_bytes() == CORPUS
    assert [r.get("range") for r in state.requests] == [f"bytes={4 * len(archive)}-", None]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.en-pt.tsv"]


def test_plain_file_mirror_for_archive_source(tmp_path, server, monkeypatch) -> None:
    url, state = server
    state.files["/por.txt"] = CORPUS
    use_source(monkeypatch)
    out = dl.download("test", tmp_path, source=f"{url}/por.txt", progress=False)
    assert out.read_bytes() == CORPUS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.en-pt.tsv"]


def test_wrong_sha256_leaves_nothing(tmp_path, server, monkeypatch) -> None:
    url, state = server
    state.files["/por-eng.zip"] = make_zip({"por.txt": CORPUS})
    use_source(monkeypatch, sha256="0" * 64)
    dest = tmp_path / "data"
    with pytest.raises(DataError, match="SHA-256"):
        dl.download("test", dest, source=f"{url}/por-eng.zip", progress=False)
    assert list(dest.iterdir()) == []


def test_size_mismatch_leaves_nothing(tmp_path, server, monkeypatch) -> None:
    url, state = server
    archive = make_zip({"por.txt": CORPUS})
    state.files["/por-eng.zip"] = archive
    use_source(monkeypatch, size=len(archive) + 1)
    dest = tmp_path / "data"
    with pytest.raises(DataError, match="bytes"):
        dl.download("test", dest, source=f"{url}/por-eng.zip", progress=False)
    assert list(dest.iterdir()) == []


def _symlink_member() -> tarfile.TarInfo:
    info = tarfile.TarInfo("por.txt")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return info


@pytest.mark.parametrize(
    "archive",
    [
        pytest.param(lambda: make_zip({"por.txt": CORPUS, "../evil": b"pwned"}), id="zip-dotdot"),
        pytest.param(
            lambda: make_tar([tarfile.TarInfo("/tmp/evil-abs"), tarfile.TarInfo("por.txt")]),
            id="tar-absolute",
        ),
        pytest.param(lambda: make_tar([_symlink_member()]), id="tar-symlink"),
    ],
)
def test_unsafe_archive_is_refused(tmp_path, server, monkeypatch, archive) -> None:
    url, state = server
    state.files["/bad.tar"] = archive()
    use_source(monkeypatch)
    dest = tmp_path / "a" / "data"
    with pytest.raises(DataError, match="unsafe"):
        dl.download("test", dest, source=f"{url}/bad.tar", progress=False)
    assert list(dest.iterdir()) == []
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "data"]


def test_local_archive_source(tmp_path, server, monkeypatch) -> None:
    _, state = server
    local = tmp_path / "mirror.zip"
    local.write_bytes(make_zip({"por.txt": CORPUS}))
    use_source(monkeypatch)
    dest = tmp_path / "data"
    out = dl.download("test", dest, source=str(local), progress=False)
    assert out.read_bytes() == CORPUS
    assert local.exists()  # the user's own archive is not deleted
    assert state.requests == []


def test_corrupt_archive_is_data_error(tmp_path, monkeypatch) -> None:
    local = tmp_path / "broken.zip"
    archive = bytearray(make_zip({"por.txt": CORPUS * 20}))
    archive[60:80] = b"\xff" * 20  # damage the compressed data of the first member
    local.write_bytes(bytes(archive))
    use_source(monkeypatch, member="_about.txt")
    dest = tmp_path / "data"
    with pytest.raises(DataError, match="broken.zip"):
        dl.download("test", dest, source=str(local), progress=False)
    assert list(dest.iterdir()) == []


def test_local_plain_file_and_file_url(tmp_path, monkeypatch) -> None:
    local = tmp_path / "por.txt"
    local.write_bytes(CORPUS)
    use_source(monkeypatch)
    out = dl.download("test", tmp_path / "a", source=str(local), progress=False)
    assert out.read_bytes() == CORPUS
    out = dl.download("test", tmp_path / "b", source=local.as_uri(), progress=False)
    assert out.read_bytes() == CORPUS


def test_missing_local_source(tmp_path, monkeypatch) -> None:
    use_source(monkeypatch)
    with pytest.raises(DataError, match=r"nope\.zip"):
        dl.download("test", tmp_path, source=str(tmp_path / "nope.zip"), progress=False)


def test_unknown_name(tmp_path) -> None:
    with pytest.raises(UsageError, match="tatoeba"):
        dl.download("no-such-corpus", tmp_path, progress=False)


def test_registry_http_url_refused(tmp_path, server, monkeypatch) -> None:
    url, state = server
    state.files["/por-eng.zip"] = make_zip({"por.txt": CORPUS})
    use_source(monkeypatch, url=f"{url}/por-eng.zip")
    with pytest.raises(DataError, match="https"):
        dl.download("test", tmp_path, progress=False)
    assert state.requests == []


def test_already_downloaded_is_not_fetched(tmp_path, server, monkeypatch) -> None:
    url, state = server
    state.files["/por-eng.zip"] = make_zip({"por.txt": b"other\tcontent\tx\n"})
    use_source(monkeypatch)
    (tmp_path / "test.en-pt.tsv").write_bytes(CORPUS)
    out = dl.download("test", tmp_path, source=f"{url}/por-eng.zip", progress=False)
    assert out.read_bytes() == CORPUS
    assert state.requests == []


def test_network_error_is_data_error(tmp_path, server, monkeypatch) -> None:
    url, _ = server
    use_source(monkeypatch)
    with pytest.raises(DataError, match="404"):
        dl.download("test", tmp_path, source=f"{url}/missing.zip", progress=False)
    with pytest.raises(DataError, match="run the command again"):
        dl.download("test", tmp_path, source="http://127.0.0.1:1/x.zip", progress=False)


# --- `nmt data download tatoeba --from MIRROR`: the registry entry, end to end, offline


def download_tatoeba(mirror: Path | None, dest: Path, *options: str):
    """`nmt data download tatoeba [--from MIRROR] --dest DEST [OPTIONS]`, in this process."""
    source = ["--from", str(mirror)] if mirror is not None else []
    return runner.invoke(app, ["data", "download", "tatoeba", *source, "--dest", str(dest),
                               *options])


def prepared_texts(tmp: Path, corpus: Path, tag: str) -> dict[str, bytes]:
    """`nmt data prepare` of configs/tiny.yaml reading only `corpus` (format auto): asserts
    that every line was read and none skipped; returns the prepared train/valid/test texts."""
    cfg = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    cfg["data"].update(dir=str(corpus.parent), prepared_dir=str(tmp / f"prepared-{tag}"),
                       corpora=[{"path": corpus.name}])
    config = tmp / f"{tag}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["data", "prepare", "-c", str(config)])
    assert result.exit_code == 0, result.stderr
    lines = len(corpus.read_bytes().splitlines())
    assert re.search(rf"^lines read +{lines:,}$", result.stdout, re.M), result.stdout
    assert "skipped" not in result.stdout, result.stdout
    where = Path(re.search(r"^prepared data +(\S+)$", result.stdout, re.M)[1])
    return {p.name: p.read_bytes() for p in sorted(where.glob("*.en")) + sorted(where.glob("*.pt"))}


def test_tatoeba_from_a_local_archive_is_a_corpus_that_prepare_reads(tmp_path, monkeypatch):
    """The registry entry takes por.txt out of an Anki export archive (por-eng.zip, as
    manythings.org serves it) into data/tatoeba.en-pt.tsv, and `nmt data prepare` reads that
    file as English-Portuguese pairs, attribution dropped: it prepares exactly the data that
    the same pairs as a two-column TSV give. A second download finds the file and fetches
    nothing."""
    pairs = TINY_CORPUS.read_text(encoding="utf-8").splitlines()
    anki = "".join(f"{pair}\t{ATTR.format(2 * i + 1, 2 * i + 2)}\n" for i, pair in enumerate(pairs))
    mirror = tmp_path / "por-eng.zip"
    mirror.write_bytes(make_zip({"por.txt": anki.encode()}))
    dest = tmp_path / "data"

    result = download_tatoeba(mirror, dest)
    assert result.exit_code == 0, result.stderr
    saved = dest / "tatoeba.en-pt.tsv"
    assert result.stdout == f"{saved}\n"
    assert saved.read_bytes() == anki.encode()
    assert sorted(p.name for p in dest.iterdir()) == ["tatoeba.en-pt.tsv"]
    assert mirror.exists()  # the user's own archive is kept

    def no_network(*args, **kwargs):
        raise AssertionError("the corpus is present: nothing is to be fetched")

    monkeypatch.setattr(dl.urllib.request, "urlopen", no_network)
    again = download_tatoeba(None, dest)  # the registry's own https URL: not used
    assert again.exit_code == 0, again.stderr
    assert again.stdout == f"{saved}\n" and saved.read_bytes() == anki.encode()

    (tmp_path / "plain").mkdir()
    plain = tmp_path / "plain" / "pairs.tsv"
    plain.write_text("".join(f"{pair}\n" for pair in pairs), encoding="utf-8")
    from_download = prepared_texts(tmp_path, saved, "downloaded")
    assert set(from_download) == {f"{s}.{lang}" for s in ("train", "valid", "test")
                                  for lang in ("en", "pt")}
    assert from_download == prepared_texts(tmp_path, plain, "plain")


def register_checksums(monkeypatch: pytest.MonkeyPatch, archive: bytes) -> str:
    """Gives the tatoeba entry the size and SHA-256 of `archive`; returns the SHA-256."""
    digest = hashlib.sha256(archive).hexdigest()
    tatoeba = replace(dl.SOURCES["tatoeba"], size=len(archive), sha256=digest)
    monkeypatch.setitem(dl.SOURCES, "tatoeba", tatoeba)
    return digest


def one_error_line(stderr: str) -> str:
    """The one `error:` line that ends stderr (log lines may come before it)."""
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and stderr.strip().endswith(errors[0]), stderr
    assert "Traceback" not in stderr
    return errors[0]


def test_tatoeba_size_and_sha256_take_the_right_archive_and_refuse_others(tmp_path, monkeypatch):
    """With a size and SHA-256 in the registry, an archive of other bytes (one byte changed,
    same size; or a byte longer) is refused with one line naming the expected and actual
    value, exit 1, nothing written to --dest and the mirror left alone; the right archive is
    then accepted and extracted."""
    archive = make_zip({"por.txt": CORPUS}, zipfile.ZIP_STORED)
    digest = register_checksums(monkeypatch, archive)
    tampered = bytearray(archive)
    tampered[archive.index(b"Hello.")] = ord("J")  # "Jello.": the zip stays well-formed
    longer = archive + b"\0"
    dest = tmp_path / "data"
    for name, data, says in [
        ("tampered.zip", bytes(tampered),
         f"expected SHA-256 {digest}, got {hashlib.sha256(tampered).hexdigest()}"),
        ("longer.zip", longer, f"expected {len(archive)} bytes, got {len(longer)}"),
    ]:
        mirror = tmp_path / name
        mirror.write_bytes(data)
        result = download_tatoeba(mirror, dest)
        assert result.exit_code == 1, (result.stdout, result.stderr)
        assert one_error_line(result.stderr) == f"error: {mirror}: {says}"
        assert result.stdout == ""
        assert list(dest.iterdir()) == []
        assert mirror.read_bytes() == data

    mirror = tmp_path / "por-eng.zip"
    mirror.write_bytes(archive)
    result = download_tatoeba(mirror, dest)
    assert result.exit_code == 0, result.stderr
    assert (dest / "tatoeba.en-pt.tsv").read_bytes() == CORPUS
    assert sorted(p.name for p in dest.iterdir()) == ["tatoeba.en-pt.tsv"]


def test_tatoeba_truncated_archive_is_refused(tmp_path, monkeypatch):
    archive = make_zip({"por.txt": CORPUS})
    register_checksums(monkeypatch, archive)
    mirror = tmp_path / "por-eng.zip"
    mirror.write_bytes(archive[: len(archive) // 2])  # an interrupted copy
    dest = tmp_path / "data"
    result = download_tatoeba(mirror, dest)
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert one_error_line(result.stderr).startswith(f"error: {mirror}: expected ")
    assert list(dest.iterdir()) == []


def test_truncated_archive_without_checksums_is_refused(tmp_path):
    """The registry's tatoeba entry has no size or SHA-256: a cut archive is still no corpus."""
    mirror = tmp_path / "por-eng.zip"
    mirror.write_bytes(make_zip({"por.txt": CORPUS})[:200])
    dest = tmp_path / "data"
    result = download_tatoeba(mirror, dest)
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert "a damaged or incomplete archive" in one_error_line(result.stderr)
    assert list(dest.iterdir()) == []


# --- `nmt data download tatoeba --pair XXX-eng`: another language with English

GERMAN = [("Hello.", "Hallo."), ("I like green tea.", "Ich mag grünen Tee."),
          ("Where is the station?", "Wo ist der Bahnhof?")]
GERMAN_CORPUS = "".join(f"{en}\t{de}\t{ATTR.format(i, i + 1)}\n"
                        for i, (en, de) in enumerate(GERMAN)).encode()


def test_tatoeba_pair_from_a_local_archive_reads_in_both_directions(tmp_path):
    """`--pair deu-eng` takes deu.txt out of deu-eng.zip into tatoeba.en-de.tsv, says in one log
    line that no checksum is known for it; `--langs de,en` then finds it present. The file reads
    as German-English and as English-German pairs."""
    mirror = tmp_path / "deu-eng.zip"
    mirror.write_bytes(make_zip({"deu.txt": GERMAN_CORPUS, "por.txt": CORPUS}))
    dest = tmp_path / "data"
    result = download_tatoeba(mirror, dest, "--pair", "deu-eng")
    assert result.exit_code == 0, result.stderr
    saved = dest / "tatoeba.en-de.tsv"
    assert result.stdout == f"{saved}\n" and saved.read_bytes() == GERMAN_CORPUS
    notes = [line for line in result.stderr.splitlines() if "no SHA-256 is known" in line]
    assert len(notes) == 1 and "tatoeba.en-de.tsv" in notes[0], result.stderr

    again = download_tatoeba(None, dest, "--langs", "de,en")
    assert again.exit_code == 0 and again.stdout == f"{saved}\n", again.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["tatoeba.en-de.tsv"]

    german_english = [(de, en) for en, de in GERMAN]
    for pair, expected in [(("de", "en"), german_english), (("en", "deu"), GERMAN)]:
        rows = read_corpus(CorpusConfig(path=saved.name, format="anki"), dest, ReadStats(),
                           pair=pair)
        assert [(src, tgt) for _, src, tgt in rows] == expected, pair


def test_tatoeba_default_pair_keeps_its_registry_entry(tmp_path, monkeypatch):
    """`--pair por-eng` and `--langs pt,en` are the default entry: its file name, and its size
    and SHA-256 where the registry knows them."""
    archive = make_zip({"por.txt": CORPUS}, zipfile.ZIP_STORED)
    digest = register_checksums(monkeypatch, archive)
    tampered = bytearray(archive)
    tampered[archive.index(b"Hello.")] = ord("J")
    mirror = tmp_path / "tampered.zip"
    mirror.write_bytes(bytes(tampered))
    dest = tmp_path / "data"
    result = download_tatoeba(mirror, dest, "--pair", "por-eng")
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert f"expected SHA-256 {digest}" in one_error_line(result.stderr)
    mirror.write_bytes(archive)
    result = download_tatoeba(mirror, dest, "--langs", "pt,en")
    assert result.exit_code == 0, result.stderr
    assert (dest / "tatoeba.en-pt.tsv").read_bytes() == CORPUS
    assert "no SHA-256 is known" not in result.stderr


@pytest.mark.parametrize("options, says", [
    (["--pair", "deu-fra"], "manythings.org pairs one language with English"),
    (["--pair", "eng-eng"], "manythings.org pairs one language with English"),
    (["--langs", "xx,en"], "no three-letter code known for 'xx'"),
    (["--pair", "deu_eng"], "expected two language codes such as por-eng or pt,en"),
    (["--pair", "deu-eng", "--langs", "de,en"], "give one of them"),
])
def test_tatoeba_pair_mistakes_are_one_line_exit_2(tmp_path, options, says):
    mirror = tmp_path / "deu-eng.zip"
    mirror.write_bytes(make_zip({"deu.txt": GERMAN_CORPUS}))
    result = download_tatoeba(mirror, tmp_path / "data", *options)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert says in one_error_line(result.stderr)
    assert not (tmp_path / "data").exists() or list((tmp_path / "data").iterdir()) == []


def test_a_pair_for_a_corpus_of_one_pair_is_refused(tmp_path, monkeypatch):
    use_source(monkeypatch)
    with pytest.raises(UsageError, match="--pair/--langs are for tatoeba"):
        dl.download("test", tmp_path, langs=("de", "en"), progress=False)
