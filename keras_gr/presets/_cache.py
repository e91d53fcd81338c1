"""The one cache of locally built folders (local presets, the LLM pool).

`cached_build` is the only place that decides whether a cached folder can
be returned or must be (re)built, for every builder in `keras_gr.presets`:

- **Key.** The folder is `<prefix>-<key>`, `key` the first 16 hex digits of
  the SHA-256 of the JSON (sorted keys) of the build inputs the caller
  passes: its arguments, a digest of its recipe (`source_digest`), library
  versions (`package_version`), and whatever else changes the result.
- **Manifest.** A build writes `keras_gr_preset.json` (`METADATA_FILE`)
  holding the caller's metadata, `cache_key` (the inputs the key hashes)
  and `files` (every other file with its size in bytes). A cached folder
  is returned only when the manifest is readable, lists the caller's
  required file and every listed file has that size (`is_complete`); any
  other folder under the name is rebuilt.
- **Atomic.** A build writes into a hidden temporary folder
  (`.<prefix>-<key>-*`) renamed into place only when complete.
- **One builder at a time.** Building holds an exclusive lock on
  `.<prefix>-<key>.lock` (`fcntl.flock`, `msvcrt` on Windows); a second
  process asking for the same key waits, then reuses the folder the first
  one wrote. Locks die with their process.
- **No litter.** Temporary folders left by killed builds are removed by
  the next build under the same prefix in the same cache folder (such a
  folder is stale exactly when no process holds its key's lock).
"""

import hashlib
import importlib.metadata
import inspect
import json
import os
import shutil
import tempfile
import time

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None
    import msvcrt

METADATA_FILE = "keras_gr_preset.json"
"""The manifest every cached folder carries (see the module docstring)."""


def cache_root() -> str:
    """`$KERAS_GR_CACHE` when set, else `~/.cache/keras_gr`."""
    return os.environ.get("KERAS_GR_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "keras_gr"
    )


def check_path(name, value, allow_none=True):
    """Returns `value` as a `str` path; `ValueError` naming `name` unless
    it is a non-empty `str` / `os.PathLike` (or `None` when allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if isinstance(path, str) and path:
            return path
    allowed = "a non-empty path (str or os.PathLike)"
    raise ValueError(
        f"`{name}` must be {allowed + ' or None' if allow_none else allowed}."
        f" Received: {name}={value!r}"
    )


def package_version(name):
    """The installed version of distribution `name`, or `"not installed"`."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def source_digest(tag, functions, extra=None):
    """SHA-256 (hex) of `tag`, the JSON of `extra` and the source of every
    function in `functions` (its qualified name where the source is not
    available, e.g. a frozen install)."""
    h = hashlib.sha256(str(tag).encode())
    if extra is not None:
        h.update(json.dumps(extra, sort_keys=True).encode())
    for fn in functions:
        try:
            h.update(inspect.getsource(fn).encode("utf-8"))
        except (OSError, TypeError):
            h.update(fn.__qualname__.encode())
    return h.hexdigest()


def cache_key(inputs):
    """The 16-hex-digit key of a JSON-serialisable dict of build inputs."""
    text = json.dumps(inputs, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class FileLock:
    """An exclusive advisory lock on a file, released when the process
    dies (`fcntl.flock` on POSIX, `msvcrt.locking` on Windows)."""

    def __init__(self, path):
        self.path = path
        self._fd = None

    def acquire(self, blocking=True):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                flags = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
                fcntl.flock(fd, flags)
            else:  # pragma: no cover - Windows
                while True:
                    try:
                        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                        break
                    except OSError:
                        if not blocking:
                            raise
                        time.sleep(0.5)
        except OSError:
            os.close(fd)
            if blocking:
                raise
            return False
        self._fd = fd
        return True

    def release(self):
        if self._fd is None:
            return
        try:
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            else:  # pragma: no cover - Windows
                msvcrt.locking(self._fd, msvcrt.LK_UNLCK, 1)
        finally:
            os.close(self._fd)
            self._fd = None


def lock_path(cache_dir, prefix, key):
    """The lock file of folder `<prefix>-<key>` in `cache_dir`."""
    return os.path.join(cache_dir, f".{prefix}-{key}.lock")


def remove_stale_temporaries(cache_dir, prefix, key):
    """Removes `.<prefix>-<k>-*` build folders no process is writing.

    Called while holding the lock of `key`, so that key's temporaries are
    stale by definition; another key's are stale when its lock is free.
    """
    start = f".{prefix}-"
    for name in sorted(os.listdir(cache_dir)):
        path = os.path.join(cache_dir, name)
        if not (name.startswith(start) and os.path.isdir(path)):
            continue
        other = name[len(start) :].split("-", 1)[0]
        if other == key:
            shutil.rmtree(path, ignore_errors=True)
            continue
        lock = FileLock(lock_path(cache_dir, prefix, other))
        if lock.acquire(blocking=False):
            try:
                shutil.rmtree(path, ignore_errors=True)
            finally:
                lock.release()


def file_manifest(folder):
    """`{relative path: size in bytes}` of every file under `folder` but
    the manifest itself."""
    manifest = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder).replace(os.sep, "/")
            if rel != METADATA_FILE:
                manifest[rel] = os.path.getsize(path)
    return dict(sorted(manifest.items()))


def is_complete(folder, required):
    """Whether `folder`'s manifest is readable, lists `required` and every
    file it lists is present with the recorded size. Never raises for a
    missing or damaged folder."""
    try:
        with open(os.path.join(folder, METADATA_FILE), encoding="utf-8") as f:
            files = json.load(f)["files"]
        if required not in files:
            return False
        return all(
            os.path.getsize(os.path.join(folder, rel)) == size
            for rel, size in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def cached_build(
    cache_dir, prefix, inputs, build, *, required, overwrite, verbose
):
    """Returns the complete folder `<cache_dir>/<prefix>-<key>`, building
    it first when needed (see the module docstring).

    Args:
        cache_dir: the parent folder (created when missing).
        prefix: the folder name's prefix (`"gemma"`, `"pool"`).
        inputs: a JSON-serialisable dict of everything that changes the
            result; its hash is the key, and it is stored as `cache_key`.
        build: `build(folder) -> dict`, writes the result into the empty
            `folder` and returns the metadata to store in the manifest.
        required: a file every complete folder holds (e.g. `config.json`).
        overwrite: rebuild even when a complete folder exists.
        verbose: print a line when waiting for another process's build.

    Returns:
        The absolute path of the folder.

    Raises:
        ValueError: `cache_dir` is not a writable folder.
    """
    key = cache_key(inputs)
    cache_dir = os.path.abspath(cache_dir)
    folder = os.path.join(cache_dir, f"{prefix}-{key}")
    if not overwrite and is_complete(folder, required):
        return folder
    try:
        os.makedirs(cache_dir, exist_ok=True)
        lock = FileLock(lock_path(cache_dir, prefix, key))
        if not lock.acquire(blocking=False):
            if verbose:
                print(
                    f"keras_gr: waiting for another process building {folder}"
                )
            lock.acquire()
    except OSError as err:
        raise ValueError(
            "`cache_dir` is not a writable folder "
            f"({err.strerror or err}). Received: cache_dir={cache_dir!r}"
        ) from err
    try:
        if not overwrite and is_complete(folder, required):
            return folder  # Built by the process we waited for.
        remove_stale_temporaries(cache_dir, prefix, key)
        tmp = tempfile.mkdtemp(prefix=f".{prefix}-{key}-", dir=cache_dir)
        try:
            metadata = dict(build(tmp))
            metadata["cache_key"] = inputs
            metadata["files"] = file_manifest(tmp)
            path = os.path.join(tmp, METADATA_FILE)
            with open(path, "w", encoding="utf-8") as f:
                json.dump(metadata, f, indent=2)
            if os.path.lexists(folder):
                shutil.rmtree(folder)  # Incomplete, or `overwrite`.
            os.rename(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        lock.release()
    return folder
