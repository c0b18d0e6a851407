"""Fetching a storageUri: archives over a real HTTP server on 127.0.0.1, and what is refused."""

from __future__ import annotations

import importlib
import io
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from servegraph.local.runner import LocalGraph
from servegraph.operator.render import RenderError
from servegraph.runtime.repository.layout import read_config, scan
from servegraph.runtime.storage import (
    StorageError,
    cache_target,
    fetch_model,
    model_folder_name,
)
from tests.examples.test_graph_examples import GRAPHS, scorer

SCORER = GRAPHS / "models" / "scorer"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on 127.0.0.1 (ephemeral port) and its base URL."""
    root = tmp_path / "served"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _skip_caches(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if "__pycache__" in info.name else info


def scorer_tar(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(SCORER, arcname="scorer", filter=_skip_caches)
    return path


def scorer_zip(path: Path, top: str = "scorer/") -> Path:
    with zipfile.ZipFile(path, "w") as zipped:
        for file in sorted(SCORER.rglob("*")):
            if file.is_file() and "__pycache__" not in file.parts:
                zipped.write(file, top + file.relative_to(SCORER).as_posix())
    return path


def assert_scorer_layout(folder: Path) -> None:
    assert (folder / "config.yaml").read_text() == (SCORER / "config.yaml").read_text()
    for version in ("1", "2", "3"):
        assert (folder / version / "model.py").read_bytes() == (SCORER / version / "model.py").read_bytes()
    found = scan(folder.parent)[folder.name]
    assert sorted(found.versions) == [1, 2, 3]
    assert read_config(found).input[0].name == "INPUT"


@pytest.mark.parametrize("archive", ["scorer.tar.gz", "scorer.zip"])
def test_an_archive_over_http_becomes_the_model_folder(
    tmp_path: Path, http_root: tuple[Path, str], archive: str
) -> None:
    root, base = http_root
    (scorer_tar if archive.endswith(".tar.gz") else scorer_zip)(root / archive)
    uri = f"{base}/{archive}"
    target = cache_target(uri, tmp_path / "cache")
    assert target.name == "scorer" and target.parent.parent == tmp_path / "cache"
    assert fetch_model(uri, target) == target
    assert_scorer_layout(target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["scorer"], "no partial folders left"


def test_an_archive_without_a_top_folder_and_a_refetch(tmp_path: Path, http_root: tuple[Path, str]) -> None:
    root, base = http_root
    scorer_zip(root / "flat.zip", top="")
    target = tmp_path / "m" / "scorer"
    (target / "9").mkdir(parents=True)  # left from an earlier run: replaced
    fetch_model(f"{base}/flat.zip", target)
    assert_scorer_layout(target)
    assert not (target / "9").exists()


def test_a_lone_version_folder_is_not_taken_for_the_model_folder(tmp_path: Path, http_root: tuple[Path, str]) -> None:
    root, base = http_root
    with tarfile.open(root / "bare.tgz", "w:gz") as tar:
        tar.add(SCORER / "1" / "model.py", arcname="1/model.py")
    target = fetch_model(f"{base}/bare.tgz", tmp_path / "bare")
    assert (target / "1" / "model.py").is_file()


def test_a_missing_url_names_the_uri_and_the_status(tmp_path: Path, http_root: tuple[Path, str]) -> None:
    _, base = http_root
    uri = f"{base}/nothing.tar.gz"
    with pytest.raises(StorageError) as caught:
        fetch_model(uri, tmp_path / "m")
    assert str(caught.value) == f"storageUri {uri}: HTTP 404 File not found"
    assert not (tmp_path / "m").exists()


def test_a_file_that_is_not_an_archive_is_refused(tmp_path: Path, http_root: tuple[Path, str]) -> None:
    root, base = http_root
    (root / "model.onnx").write_bytes(b"not an archive")
    with pytest.raises(StorageError, match=r"model.onnx: not a model folder archive"):
        fetch_model(f"{base}/model.onnx", tmp_path / "m")


def test_the_size_cap(tmp_path: Path, http_root: tuple[Path, str]) -> None:
    root, base = http_root
    scorer_tar(root / "scorer.tar.gz")
    with pytest.raises(StorageError, match="over the cap of 100"):
        fetch_model(f"{base}/scorer.tar.gz", tmp_path / "m", max_bytes=100)


def _evil_tar(path: Path, name: str) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for member in ("scorer/config.yaml", name):
            data = b"x: 1\n"
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _evil_zip(path: Path, name: str) -> None:
    with zipfile.ZipFile(path, "w") as zipped:
        zipped.writestr("scorer/config.yaml", "x: 1\n")
        zipped.writestr(name, "x: 1\n")


@pytest.mark.parametrize(
    ("archive", "member"),
    [("evil.tar.gz", "../evil"), ("evil.tar.gz", "scorer/../../evil"), ("abs.tar.gz", "/tmp/evil"), ("evil.zip", "../evil")],
)
def test_path_traversal_in_an_archive_is_refused(
    tmp_path: Path, http_root: tuple[Path, str], archive: str, member: str
) -> None:
    root, base = http_root
    (_evil_zip if archive.endswith(".zip") else _evil_tar)(root / archive, member)
    target = tmp_path / "deep" / "cache" / "m"
    with pytest.raises(StorageError) as caught:
        fetch_model(f"{base}/{archive}", target)
    assert f"archive member '{member}' would be written outside the model folder" in str(caught.value)
    assert not target.exists() and list(target.parent.iterdir()) == [], "nothing written"
    assert not (tmp_path / "deep" / "evil").exists() and not (tmp_path / "evil").exists()


def test_local_uris_are_returned_as_they_are(tmp_path: Path) -> None:
    assert fetch_model(str(SCORER), tmp_path / "m") == SCORER
    assert fetch_model(f"file://{SCORER}", tmp_path / "m") == SCORER
    assert fetch_model("models/scorer", tmp_path / "m") == Path("models/scorer")
    assert not (tmp_path / "m").exists(), "nothing copied"


@pytest.mark.parametrize(
    ("uri", "hidden", "expected"),
    [
        ("s3://bucket/models/scorer", "boto3", "storageUri s3://bucket/models/scorer needs boto3: pip install boto3"),
        ("gs://bucket/models/scorer", "google.cloud.storage",
         "storageUri gs://bucket/models/scorer needs google-cloud-storage: pip install google-cloud-storage"),
    ],
)
def test_an_object_store_without_its_library_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uri: str, hidden: str, expected: str
) -> None:
    monkeypatch.setitem(sys.modules, hidden, None)  # as if not installed: importing it fails
    if "." in hidden:
        parent, _, child = hidden.rpartition(".")
        monkeypatch.delattr(importlib.import_module(parent), child, raising=False)
    with pytest.raises(StorageError) as caught:
        fetch_model(uri, tmp_path / "m")
    assert str(caught.value) == expected


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("pvc://claim/m", "storageUri pvc://claim/m: pvc:// is served only inside a cluster"),
        ("ftp://host/m.tar", "storageUri ftp://host/m.tar: unsupported scheme 'ftp://'"),
    ],
)
def test_what_cannot_be_fetched_here(tmp_path: Path, uri: str, expected: str) -> None:
    with pytest.raises(StorageError, match=expected):
        fetch_model(uri, tmp_path / "m")


def test_model_folder_names() -> None:
    assert model_folder_name("https://h/a/scorer.tar.gz?x=1") == "scorer"
    assert model_folder_name("https://h/a/scorer.TGZ") == "scorer"
    assert model_folder_name("s3://bucket/models/m/") == "m"
    assert model_folder_name("gs://bucket") == "model"
    assert cache_target("s3://b/m", Path("c")) != cache_target("s3://b2/m", Path("c"))


# ----------------------------------------------------------------------------- the puller command


def test_servegraph_fetch_is_the_model_puller(tmp_path: Path, http_root: tuple[Path, str]) -> None:
    root, base = http_root
    scorer_tar(root / "scorer.tar.gz")
    dest = tmp_path / "models" / "scorer"
    done = subprocess.run(
        [sys.executable, "-m", "servegraph.cli", "fetch", f"{base}/scorer.tar.gz", str(dest)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{base}/scorer.tar.gz -> {dest}"
    assert_scorer_layout(dest)
    failed = subprocess.run(
        [sys.executable, "-m", "servegraph.cli", "fetch", f"{base}/gone.tar.gz", str(tmp_path / "gone")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert failed.returncode == 1
    assert failed.stderr.strip() == f"servegraph fetch: storageUri {base}/gone.tar.gz: HTTP 404 File not found"
    assert not (tmp_path / "gone").exists()


# ----------------------------------------------------------------------------- servegraph run


def test_servegraph_run_serves_a_model_over_http(tmp_path: Path, http_root: tuple[Path, str]) -> None:
    root, base = http_root
    scorer_tar(root / "scorer.tar.gz")
    manifest = tmp_path / "ab-test.yaml"
    text = (GRAPHS / "ab-test.yaml").read_text()
    assert text.count("storageUri: models/scorer") == 2
    manifest.write_text(text.replace("storageUri: models/scorer", f"storageUri: {base}/scorer.tar.gz"))
    graph = LocalGraph(manifest, http_port=0, grpc_port=0, metrics_port=0, workdir=tmp_path / "work", log=io.StringIO())
    graph.start()
    client = httpclient.InferenceServerClient(f"127.0.0.1:{graph.entry.http}")
    try:
        fetched = list((tmp_path / "work" / "fetched").iterdir())
        assert len(fetched) == 1, "both arms share one fetch of the URI"
        x = np.random.default_rng(4).standard_normal((2, 4)).astype(np.float32)
        tensor = httpclient.InferInput("INPUT", [2, 4], "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("ab-test", [tensor])
        arm = str(result.get_response()["parameters"]["servegraph.route"])
        version = {"scorer-a": 1, "scorer-b": 2}[arm]
        np.testing.assert_allclose(result.as_numpy("PROBS"), scorer(version, x), rtol=1e-5)
    finally:
        client.close()
        graph.stop()
    assert graph.processes == []


def test_servegraph_run_reports_an_unfetchable_model_and_starts_nothing(tmp_path: Path) -> None:
    manifest = tmp_path / "ab-test.yaml"
    manifest.write_text((GRAPHS / "ab-test.yaml").read_text().replace("storageUri: models/scorer", "storageUri: pvc://claim/scorer"))
    graph = LocalGraph(manifest, http_port=0, grpc_port=0, metrics_port=0, workdir=tmp_path / "work", log=io.StringIO())
    with pytest.raises(RenderError, match=r"node 'scorer-a': storageUri pvc://claim/scorer: pvc:// is served only inside a cluster"):
        graph.start()
    assert graph.processes == []
