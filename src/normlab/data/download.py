"""Download a file with checksum verification and an atomic write."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path


class DownloadError(OSError):
    """The file could not be fetched, or its checksum did not match."""


def download(url: str, dest: Path, md5: str | None, timeout: float = 30.0) -> Path:
    """Fetch ``url`` to ``dest``; the file appears only once complete and verified."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if md5 is not None and digest.hexdigest() != md5:
            raise DownloadError(f"checksum mismatch for {url}: md5 {digest.hexdigest()}, expected {md5}")
        os.replace(tmp, dest)
        return dest
    except OSError as e:  # URLError and timeouts are OSErrors too
        raise e if isinstance(e, DownloadError) else DownloadError(f"{url}: {e}") from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
