"""``gs://bucket/name`` objects through the google-cloud-storage client (`lsnet_tf.utils.files`
sends every ``gs://`` path here).

Why this client and not ``tf.io.gfile`` or Beam's ``FileSystems``:

- TensorFlow's own GCS filesystem has the service's address compiled in (``kGcsUriBase``,
  ``https://www.googleapis.com/storage/v1/``, in tsl/platform/cloud/gcs_file_system.cc; no
  environment variable changes it), so it cannot be pointed at an emulator, and what goes
  through it cannot be tested without a real bucket. google-cloud-storage honours
  ``STORAGE_EMULATOR_HOST``, so the code that runs against Google Cloud is the code the tests
  run against ``gcp-storage-emulator``.
- It is the client Beam's own ``gs://`` filesystem uses (apache-beam[gcp] installs it), so it
  is on every Beam worker that can read a bucket; calling it directly works in this process and
  in a DoFn alike, with no pipeline options to carry (Beam's ``FileSystems`` builds its client
  from them) and with the errors of the service itself (404, 403) to name the URL by.

Credentials are Google's application default credentials (``gcloud auth application-default
login``, a service account, a worker's metadata server); without any, public buckets are read
anonymously. With ``STORAGE_EMULATOR_HOST`` set, every call goes to that emulator.

An object is written by one upload, which Cloud Storage makes visible under its name only once
it is complete: a reader never sees half an object, so no temporary name is needed. Folders are
name prefixes (``gs://b/ds/fold-0/`` exists while an object's name starts with it).

Errors are `StorageError` (an `OSError`) naming the URL: `BucketNotFound` and `ObjectNotFound`
(also `FileNotFoundError`), `AccessDenied` (also `PermissionError`: 401/403), and
`TruncatedObject` (fewer bytes read than the object's size, or a checksum that does not match).
"""
from __future__ import annotations

import contextlib
import fnmatch
import os
import threading

SCHEME = "gs://"


class StorageError(OSError):
    """A ``gs://`` object or bucket that cannot be read or written; the message names the URL."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason

    def __str__(self) -> str:
        return self.args[0]


class BucketNotFound(StorageError, FileNotFoundError):
    """The bucket of a URL does not exist."""


class ObjectNotFound(StorageError, FileNotFoundError):
    """No object (and no folder) at a URL."""


class AccessDenied(StorageError, PermissionError):
    """The service refused the request (401, 403): no permission, or no valid credentials."""


class TruncatedObject(StorageError):
    """An object read short of its size, or whose bytes do not match its checksum."""


def is_gcs(path) -> bool:
    return str(path).startswith(SCHEME)


def split(url: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``."""
    bucket, _, name = str(url)[len(SCHEME):].partition("/")
    if not bucket:
        raise ValueError(f"{url}: no bucket in the URL (gs://BUCKET/NAME)")
    return bucket, name


_lock = threading.Lock()
_clients: dict = {}


def client():
    """The process's storage client (one per process and emulator address)."""
    from google.cloud import storage

    key = (os.getpid(), os.environ.get("STORAGE_EMULATOR_HOST"))
    with _lock:
        if key not in _clients:
            try:
                _clients[key] = storage.Client()
            except Exception as e:  # noqa: BLE001 - no default credentials: public buckets only
                from google.auth.exceptions import DefaultCredentialsError

                if not isinstance(e, DefaultCredentialsError):
                    raise
                _clients[key] = storage.Client.create_anonymous_client()
        return _clients[key]


def _bucket_exists(bucket: str) -> bool:
    from google.api_core import exceptions

    try:
        return client().bucket(bucket).exists()
    except exceptions.Forbidden:
        return True  # it exists; the object's own request says what is refused


@contextlib.contextmanager
def errors_named(url: str, what: str = "object"):
    """Turn the client's errors inside the block into `StorageError`s naming `url`."""
    from google.api_core import exceptions

    try:
        yield
    except StorageError:
        raise
    except exceptions.NotFound as e:
        bucket, _ = split(url)
        if not _bucket_exists(bucket):
            raise BucketNotFound(url, f"the bucket gs://{bucket} does not exist") from e
        raise ObjectNotFound(url, f"no such {what}") from e
    except (exceptions.Forbidden, exceptions.Unauthorized) as e:
        raise AccessDenied(url, f"access denied ({e.code}: {getattr(e, 'message', e)})") from e
    except exceptions.GoogleAPICallError as e:
        raise StorageError(url, f"{type(e).__name__}: {e}") from e
    except Exception as e:
        import requests
        from google.resumable_media import DataCorruption

        if isinstance(e, DataCorruption):
            raise TruncatedObject(url, f"the bytes read do not match the object's checksum "
                                       f"({e})") from e
        if isinstance(e, requests.exceptions.RequestException):
            raise StorageError(url, f"Cloud Storage cannot be reached ({type(e).__name__}: "
                                    f"{e})") from e
        raise


def _blob(url: str):
    bucket, name = split(url)
    if not name or name.endswith("/"):
        raise IsADirectoryError(f"{url}: names a folder, not an object")
    return client().bucket(bucket).blob(name)


def _prefix(url: str) -> tuple[str, str]:
    bucket, name = split(url)
    return bucket, (name.rstrip("/") + "/") if name.strip("/") else ""


def isfile(url: str) -> bool:
    bucket, name = split(url)
    if not name or name.endswith("/"):
        return False
    with errors_named(url):
        return client().bucket(bucket).blob(name).exists()


def isdir(url: str) -> bool:
    bucket, prefix = _prefix(url)
    with errors_named(url, "folder"):
        if not prefix:
            return client().bucket(bucket).exists()
        return any(True for _ in client().list_blobs(bucket, prefix=prefix, max_results=1))


def exists(url: str) -> bool:
    return isfile(url) or isdir(url)


def listdir(url: str) -> list[str]:
    """The names directly in folder `url` (objects and sub-folders), sorted."""
    bucket, prefix = _prefix(url)
    with errors_named(url, "folder"):
        blobs = client().list_blobs(bucket, prefix=prefix, delimiter="/")
        names = [b.name[len(prefix):] for b in blobs]
        names += [p[len(prefix):].rstrip("/") for p in blobs.prefixes]
    if not names and not isdir(url):
        raise ObjectNotFound(url, "no such folder")
    return sorted(n for n in set(names) if n)


def walk_files(url: str) -> list[str]:
    """Every object under folder `url`, as names relative to it (``/``-separated), sorted."""
    bucket, prefix = _prefix(url)
    with errors_named(url, "folder"):
        return sorted(b.name[len(prefix):] for b in client().list_blobs(bucket, prefix=prefix)
                      if not b.name.endswith("/"))


def glob(pattern: str) -> list[str]:
    """The objects whose URL matches `pattern` (``*``, ``?``, ``[...]`` within one ``/``-separated
    part, as ``tf.io.gfile.glob``), sorted."""
    bucket, name = split(pattern)
    parts = name.split("/")
    fixed = []
    for part in parts:
        if any(c in part for c in "*?["):
            break
        fixed.append(part)
    prefix = "/".join(fixed) + ("/" if len(fixed) < len(parts) and fixed else "")
    found = []
    with errors_named(pattern, "folder"):
        for b in client().list_blobs(bucket, prefix=prefix):
            segments = b.name.split("/")
            if len(segments) == len(parts) and all(
                    fnmatch.fnmatchcase(s, p) for s, p in zip(segments, parts)):
                found.append(f"{SCHEME}{bucket}/{b.name}")
    return sorted(found)


def getsize(url: str) -> int:
    bucket, name = split(url)
    with errors_named(url):
        blob = client().bucket(bucket).get_blob(name)
    if blob is None:
        with errors_named(url):
            _raise_missing(url)
    return int(blob.size)


def _raise_missing(url: str):
    from google.api_core import exceptions

    raise exceptions.NotFound(f"{url} not found")


def read_bytes(url: str, start: int | None = None, end: int | None = None) -> bytes:
    """The object's bytes (``start``..``end`` inclusive when given); `TruncatedObject` when
    fewer come than its size says."""
    bucket, name = split(url)
    with errors_named(url):
        blob = client().bucket(bucket).get_blob(name) if name else None
        if blob is None:
            _raise_missing(url)
        whole = start is None and end is None
        data = blob.download_as_bytes(start=start, end=end,
                                      checksum="md5" if whole else None)
    size = int(blob.size)
    expected = size if whole else max(0, min(size - 1, end if end is not None else size - 1)
                                      - (start or 0) + 1)
    if len(data) != expected:
        raise TruncatedObject(url, f"read {len(data)} bytes of {expected}")
    return data


def download(url: str, path: str) -> str:
    """Copy object `url` to the local file `path` (written whole, then renamed); returns it."""
    data = read_bytes(url)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def write_bytes(url: str, data: bytes, content_type: str = "application/octet-stream") -> str:
    """Upload `data` as object `url` (one upload: the object appears only when whole)."""
    with errors_named(url, "bucket"):
        _blob(url).upload_from_string(data, content_type=content_type)
    return url


def upload(path: str, url: str) -> str:
    """Upload the local file `path` as object `url`."""
    with open(path, "rb") as f:
        data = f.read()
    return write_bytes(url, data)


def makedirs(url: str) -> None:
    """Nothing to create (folders are name prefixes); `BucketNotFound` when the bucket is not
    there."""
    bucket, _ = split(url)
    with errors_named(url):
        if not client().bucket(bucket).exists():
            raise BucketNotFound(url, f"the bucket gs://{bucket} does not exist")


def remove(url: str) -> None:
    with errors_named(url):
        _blob(url).delete()


def rmtree(url: str) -> None:
    """Delete every object under folder `url`."""
    bucket, prefix = _prefix(url)
    if not prefix:
        raise ValueError(f"{url}: refusing to delete a whole bucket")
    with errors_named(url, "folder"):
        for b in list(client().list_blobs(bucket, prefix=prefix)):
            b.delete()


def copy(src: str, dst: str) -> None:
    """Copy object `src` to `dst` on the service (both ``gs://``)."""
    (sb, sn), (db, dn) = split(src), split(dst)
    with errors_named(src):
        c = client()
        c.bucket(sb).copy_blob(c.bucket(sb).blob(sn), c.bucket(db), dn)
