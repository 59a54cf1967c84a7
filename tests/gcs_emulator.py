"""A local Google Cloud Storage for the tests: `gcp-storage-emulator` (in memory) with the two things
TensorStore's GCS driver needs that it lacks (the object generation on downloads, generation preconditions).

    with gcs_emulator.running() as env:     # env: the variables that point gcsfs/epath and TensorStore at it
        subprocess.run([...], env={**os.environ, **env})    # gs://bucket/... now works (orbax included)

Run alone: `python -m tests.gcs_emulator PORT` serves until killed.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from http import HTTPStatus

BUCKET = "ecformer-test"


def _patch_emulator():
    from gcp_storage_emulator import server
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    def current_generation(storage, bucket, name):
        try:
            return storage.get_file_obj(bucket, name)["generation"]
        except NotFound:
            return "0"

    def precondition_ok(request, response, storage, bucket, name) -> bool:
        want = request.query.get("ifGenerationMatch")
        if want is None or want[0] == current_generation(storage, bucket, name):
            return True
        response.status = HTTPStatus.PRECONDITION_FAILED
        response.json({"error": {"code": 412, "message": "conditionNotMet"}})
        return False

    original = {"download": objects.download, "insert": objects.insert, "delete": objects.delete}

    def download(request, response, storage, *args, **kwargs):
        original["download"](request, response, storage, *args, **kwargs)
        if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = obj["generation"]
            response["x-goog-metageneration"] = obj.get("metageneration", "1")

    def insert(request, response, storage, *args, **kwargs):
        name = (request.query.get("name") or [None])[0]
        if name is not None and not precondition_ok(request, response, storage, request.params["bucket_name"], name):
            return
        original["insert"](request, response, storage, *args, **kwargs)

    def delete(request, response, storage, *args, **kwargs):
        if not precondition_ok(request, response, storage, request.params["bucket_name"],
                               request.params["object_id"]):
            return
        original["delete"](request, response, storage, *args, **kwargs)

    def move(request, response, storage, *args, **kwargs):  # objects.move (gcsfs's rename): copy, then delete
        bucket, src, dst = (request.params[k] for k in ("bucket_name", "object_id", "dest_object_id"))
        try:
            obj = objects._copy(request.base_url, storage, bucket, src, bucket, dst)
        except NotFound:
            response.status = HTTPStatus.NOT_FOUND
            return
        objects._delete(storage, bucket, src)
        response.json(obj)

    patched = {original[k]: v for k, v in (("download", download), ("insert", insert), ("delete", delete))}
    objects.download, objects.insert, objects.delete = download, insert, delete
    for _, handlers in server.HANDLERS:
        for method, fn in list(handlers.items()):
            handlers[method] = patched.get(fn, fn)
    route = r"/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)/moveTo/o/(?P<dest_object_id>.*[^/]+)$"
    moves = tuple((f"^{prefix}{route}", {"POST": move}) for prefix in ("/storage/v1", ""))
    server.HANDLERS = moves + tuple(server.HANDLERS)
    return server


def serve(port: int):
    server = _patch_emulator()
    server.create_server("localhost", port, in_memory=True, default_bucket=BUCKET).run()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def environment(port: int) -> dict:
    url = f"http://localhost:{port}"
    return {"STORAGE_EMULATOR_HOST": url,  # gcsfs (etils.epath's gs:// backend)
            "TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",  # TensorStore (orbax arrays)
            "NO_GCE_CHECK": "True", "GOOGLE_CLOUD_PROJECT": "test"}


@contextlib.contextmanager
def running():
    """Start the emulator in a subprocess; yield the environment that points clients at it (also set in
    os.environ for this process while running)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.gcs_emulator", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = environment(port)
    saved = {k: os.environ.get(k) for k in env}
    try:
        for _ in range(200):
            with contextlib.suppress(OSError):
                socket.create_connection(("localhost", port), timeout=1).close()
                break
            if proc.poll() is not None:
                raise RuntimeError("the GCS emulator did not start (pip install gcp-storage-emulator)")
            time.sleep(0.05)
        os.environ.update(env)
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
