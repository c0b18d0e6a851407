"""Fetching s3:// and gs:// model sources from real object-store servers on 127.0.0.1.

S3 is moto's server (boto3 pointed at it with ``AWS_ENDPOINT_URL``), GCS the
gcp-storage-emulator (google-cloud-storage pointed at it with ``STORAGE_EMULATOR_HOST``):
the same client libraries and wire protocol as in production, only the server is a stand-in.
"""

from __future__ import annotations

import io
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from servegraph.local.runner import LocalGraph
from servegraph.runtime.storage import StorageError, fetch_model
from tests.examples.test_graph_examples import GRAPHS, scorer
from tests.local.test_storage import SCORER, assert_scorer_layout, scorer_tar

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")
gcs_emulator = pytest.importorskip("gcp_storage_emulator.server")

Upload = Callable[[str, bytes], None]
"""Put one object (key, body) into the test's bucket."""


def scorer_objects() -> Iterator[tuple[str, bytes]]:
    """The scorer model folder as (relative key, body) pairs."""
    for file in sorted(SCORER.rglob("*")):
        if file.is_file() and "__pycache__" not in file.parts:
            yield file.relative_to(SCORER).as_posix(), file.read_bytes()


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Upload]:
    """A fresh bucket on the moto server, with boto3's environment pointing at it."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    bucket = f"models-{uuid.uuid4().hex[:8]}"
    client: Any = boto3.client("s3")
    client.create_bucket(Bucket=bucket)
    return bucket, lambda key, body: client.put_object(Bucket=bucket, Key=key, Body=body)


@pytest.fixture(scope="module")
def gcs_endpoint() -> Iterator[str]:
    with socket.socket() as probe:  # the emulator wants a port number up front
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = gcs_emulator.create_server("127.0.0.1", port, in_memory=True)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def gcs_bucket(gcs_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Upload]:
    """A fresh bucket on the GCS emulator, with google-cloud-storage pointing at it."""
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_endpoint)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "servegraph-tests")
    name = f"models-{uuid.uuid4().hex[:8]}"
    bucket = storage.Client().create_bucket(name)
    return name, lambda key, body: bucket.blob(key).upload_from_string(body)


BUCKET_FIXTURES = {"s3": "s3_bucket", "gs": "gcs_bucket"}
"""storageUri scheme -> the fixture that makes a bucket for it."""


@pytest.fixture(params=list(BUCKET_FIXTURES))
def store(request: pytest.FixtureRequest) -> tuple[str, str, Upload]:
    """(scheme, bucket, upload) for each object store."""
    bucket, upload = request.getfixturevalue(BUCKET_FIXTURES[request.param])
    return request.param, bucket, upload


def test_a_prefix_becomes_the_model_folder(tmp_path: Path, store: tuple[str, str, Upload]) -> None:
    scheme, bucket, upload = store
    for key, body in scorer_objects():
        upload(f"team/scorer/{key}", body)
    upload("team/scorer-old/config.yaml", b"not: this")  # a sibling sharing the prefix's text
    upload("team/scorer/", b"")  # a folder placeholder, as consoles make them
    folder = fetch_model(f"{scheme}://{bucket}/team/scorer", tmp_path / "scorer")
    assert folder == tmp_path / "scorer"
    assert_scorer_layout(folder)
    assert not (folder.parent / "scorer-old").exists()


def test_an_archive_object_becomes_the_model_folder(tmp_path: Path, store: tuple[str, str, Upload]) -> None:
    scheme, bucket, upload = store
    upload("archives/scorer.tar.gz", scorer_tar(tmp_path / "scorer.tar.gz").read_bytes())
    assert_scorer_layout(fetch_model(f"{scheme}://{bucket}/archives/scorer.tar.gz", tmp_path / "m" / "scorer"))


def test_an_empty_prefix_says_so(tmp_path: Path, store: tuple[str, str, Upload]) -> None:
    scheme, bucket, upload = store
    upload("elsewhere/config.yaml", b"name: x")
    with pytest.raises(StorageError) as caught:
        fetch_model(f"{scheme}://{bucket}/team/none", tmp_path / "none")
    assert str(caught.value) == f"storageUri {scheme}://{bucket}/team/none: no objects under this prefix"
    assert not (tmp_path / "none").exists()


def test_a_missing_bucket_names_the_uri_and_the_store_error(tmp_path: Path, store: tuple[str, str, Upload]) -> None:
    scheme, _, _ = store
    uri = f"{scheme}://no-such-bucket-{uuid.uuid4().hex[:6]}/scorer"
    with pytest.raises(StorageError) as caught:
        fetch_model(uri, tmp_path / "scorer")
    message = str(caught.value)
    assert message.startswith(f"storageUri {uri}: ")
    assert ("NoSuchBucket" in message) if scheme == "s3" else ("NotFound" in message)


def test_a_key_that_climbs_out_of_the_folder_is_refused(tmp_path: Path, s3_bucket: tuple[str, Upload]) -> None:
    bucket, upload = s3_bucket
    upload("team/scorer/config.yaml", b"name: scorer")
    upload("team/scorer/../../evil.py", b"print('owned')")
    with pytest.raises(StorageError, match=r"object 'team/scorer/\.\./\.\./evil\.py' would be written outside"):
        fetch_model(f"s3://{bucket}/team/scorer", tmp_path / "deep" / "scorer")
    assert not list(tmp_path.rglob("evil.py"))


def test_servegraph_run_serves_models_from_s3(tmp_path: Path, s3_bucket: tuple[str, Upload]) -> None:
    """The A/B example with both arms on s3://: fetched once, served, answers as by hand."""
    bucket, upload = s3_bucket
    for key, body in scorer_objects():
        upload(f"models/scorer/{key}", body)
    manifest = tmp_path / "ab-test.yaml"
    manifest.write_text((GRAPHS / "ab-test.yaml").read_text().replace("storageUri: models/scorer", f"storageUri: s3://{bucket}/models/scorer"))
    graph = LocalGraph(manifest, http_port=0, grpc_port=0, metrics_port=0, workdir=tmp_path / "work", log=io.StringIO())
    graph.start()
    client = httpclient.InferenceServerClient(f"127.0.0.1:{graph.entry.http}")
    try:
        assert len(list((tmp_path / "work" / "fetched").iterdir())) == 1
        x = np.random.default_rng(5).standard_normal((3, 4)).astype(np.float32)
        tensor = httpclient.InferInput("INPUT", [3, 4], "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("ab-test", [tensor])
        version = {"scorer-a": 1, "scorer-b": 2}[str(result.get_response()["parameters"]["servegraph.route"])]
        np.testing.assert_allclose(result.as_numpy("PROBS"), scorer(version, x), rtol=1e-5)
    finally:
        client.close()
        graph.stop()
    assert graph.processes == []
