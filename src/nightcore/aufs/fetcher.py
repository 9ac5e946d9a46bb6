"""The HTTP fetcher AUFS hands to python-tuf's ``Updater``.

python-tuf's ``Urllib3Fetcher`` bounds the *gap* between received bytes (its socket timeout)
and ``Updater`` bounds the *length*; a server that trickles one byte just inside the gap
timeout would still hold a download open for ever. This fetcher adds the missing bound: the
whole body of one URL must arrive before ``download_timeout`` seconds have passed, or the
download fails with python-tuf's own ``SlowRetrievalError``. It reads with ``read1`` so that a
trickling server gives control back after every chunk, and it never follows redirects.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import urllib3
from tuf.api import exceptions
from tuf.ngclient.fetcher import FetcherInterface

CHUNK = 256 * 1024


class BoundedFetcher(FetcherInterface):
    def __init__(
        self,
        *,
        download_timeout: float,
        gap_timeout: float,
        connect_timeout: float = 10.0,
        user_agent: str = "nightcore-aufs",
    ) -> None:
        self.download_timeout = download_timeout
        self.gap_timeout = gap_timeout
        self._pool = urllib3.PoolManager(
            headers={"User-Agent": user_agent},
            timeout=urllib3.Timeout(connect=connect_timeout, read=gap_timeout),
            retries=urllib3.Retry(total=2, connect=2, read=0, redirect=0, status=0, other=0),
        )

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not url.startswith(("http://", "https://")):
            raise exceptions.DownloadError(f"refusing non-HTTP URL {url[:80]}")
        deadline = time.monotonic() + self.download_timeout
        try:
            response = self._pool.request(
                "GET", url, preload_content=False, redirect=False, decode_content=False
            )
        except urllib3.exceptions.MaxRetryError as exc:
            if isinstance(exc.reason, urllib3.exceptions.TimeoutError):
                raise exceptions.SlowRetrievalError(
                    f"no response within {self.gap_timeout}s"
                ) from exc
            raise exceptions.DownloadError(f"cannot connect: {type(exc.reason).__name__}") from exc
        except urllib3.exceptions.TimeoutError as exc:
            raise exceptions.SlowRetrievalError(f"no response within {self.gap_timeout}s") from exc
        if response.status >= 300:
            response.release_conn()
            raise exceptions.DownloadHTTPError(
                f"HTTP status {response.status}", int(response.status)
            )
        return self._chunks(response, deadline)

    def _chunks(self, response: Any, deadline: float) -> Iterator[bytes]:
        try:
            while True:
                if time.monotonic() > deadline:
                    raise exceptions.SlowRetrievalError(
                        f"body not complete within {self.download_timeout}s"
                    )
                try:
                    chunk = response.read1(CHUNK)
                except urllib3.exceptions.TimeoutError as exc:
                    raise exceptions.SlowRetrievalError(f"no data for {self.gap_timeout}s") from exc
                except (urllib3.exceptions.HTTPError, OSError) as exc:
                    # IncompleteRead, connection reset: an interrupted download.
                    raise exceptions.DownloadError(
                        f"connection broke mid-body ({type(exc).__name__})"
                    ) from exc
                if not chunk:
                    return
                yield chunk
        finally:
            response.release_conn()
