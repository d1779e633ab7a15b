"""An S3-compatible bucket (AWS S3, MinIO, Ceph RGW, ...) read with boto3."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import quote

from ingestion.sources.base import DEFAULT_MAX_BYTES, Item, Source, mime_for_name
from ingestion.sources.errors import ItemTooLarge, ItemUnavailable, SourceConfigError, SourceUnreachable
from ingestion.sources.patterns import PathFilter

_CHUNK = 1024 * 1024
_MISSING = frozenset({"404", "NoSuchBucket", "NotFound"})
_REFUSED = frozenset({"403", "AccessDenied", "AllAccessDisabled", "AccountProblem"})
_BAD_CREDENTIALS = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "InvalidClientTokenId"}
)
_GONE = frozenset({"404", "NoSuchKey", "NotFound"})


class S3Source(Source):
    """The objects of ``bucket`` whose keys start with ``prefix`` and that the patterns want.

    ``endpoint_url`` points at an S3-compatible server (MinIO, Ceph, ...; path-style addressing is used
    then); without it, AWS S3 in ``region``. The credentials are passed in; when ``access_key_id`` is None,
    boto3's own chain is used (an instance role, say). The patterns (see :mod:`ingestion.sources.patterns`)
    are matched against the key relative to the prefix's folder; keys ending with "/" (folder markers) are
    skipped. Keys are the whole object keys, ``url`` is ``s3://bucket/key`` (a location; :meth:`link` gives
    the object's https address), ``version`` is the ETag without its quotes. A bucket that does not exist,
    refused credentials or access, or an endpoint that does not answer raise
    :class:`SourceUnreachable`, during the listing too: a listing cut short must not read as deletions.
    """

    kind = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        include: Iterable[str] = (),
        exclude: Iterable[str] = (),
        default_exclude: bool = True,
        page_size: int = 1000,
        timeout: float = 15.0,
        max_attempts: int = 3,
        client: Any = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        super().__init__(max_bytes=max_bytes)
        if not isinstance(bucket, str) or not bucket or "/" in bucket:
            raise SourceConfigError(f"{bucket!r} is not a bucket name")
        if not isinstance(prefix, str):
            raise SourceConfigError("The bucket's prefix must be a text")
        if not isinstance(page_size, int) or not 1 <= page_size <= 1000:
            raise SourceConfigError("page_size must be a whole number from 1 to 1000")
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise SourceConfigError("max_attempts must be a whole number of at least 1")
        if (access_key_id is None) != (secret_access_key is None):
            raise SourceConfigError("Give both the access key id and the secret access key, or neither")
        self.bucket = bucket
        self.prefix = prefix.lstrip("/")
        self.endpoint_url = endpoint_url or None
        self.region = region or None
        self._credentials = (access_key_id, secret_access_key, session_token)
        self.filter = PathFilter(include, exclude, default_exclude=default_exclude)
        self.page_size = page_size
        self.timeout = float(timeout)
        self.max_attempts = max_attempts
        self._client = client
        self._owns_client = client is None

    def __repr__(self) -> str:
        return f"S3Source({self.bucket!r}, prefix={self.prefix!r}, endpoint_url={self.endpoint_url!r})"

    def link(self, item: Item) -> str:
        """The object's https address: path-style on ``endpoint_url``, else virtual-hosted on AWS."""
        key = quote(item.key)
        if self.endpoint_url:
            return f"{self.endpoint_url.rstrip('/')}/{self.bucket}/{key}"
        return f"https://{self.bucket}.s3.{self.region or 'us-east-1'}.amazonaws.com/{key}"

    def items(self) -> Iterator[Item]:
        """List the bucket under the prefix (see the class's docstring)."""
        self.failures = []
        from botocore.exceptions import BotoCoreError, ClientError

        folder = self.prefix[: self.prefix.rfind("/") + 1]
        try:
            client = self._s3()
            client.head_bucket(Bucket=self.bucket)
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix, PaginationConfig={"PageSize": self.page_size}
            )
            for page in pages:
                for entry in page.get("Contents", ()):
                    key: str = entry["Key"]
                    if key.endswith("/") or not self.filter.wants(key[len(folder) :]):
                        continue
                    name = PurePosixPath(key).name
                    yield Item(
                        key=key,
                        name=name,
                        url=f"s3://{self.bucket}/{key}",
                        size=int(entry["Size"]),
                        version=str(entry.get("ETag", "")).strip('"'),
                        mime_type=mime_for_name(name),
                    )
        except (BotoCoreError, ClientError) as error:
            raise SourceUnreachable(self._reason(error)) from error

    def _download(self, item: Item, out: BinaryIO) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = self._s3().get_object(Bucket=self.bucket, Key=item.key)
        except ClientError as error:
            code = _code(error)
            if code in _GONE:
                raise ItemUnavailable(f"{item.url} was deleted from the bucket", transient=False) from error
            raise ItemUnavailable(f"{item.url} cannot be read: {self._reason(error)}") from error
        except BotoCoreError as error:
            raise ItemUnavailable(f"{item.url} cannot be read: {self._reason(error)}") from error
        body = answer["Body"]
        try:
            if int(answer.get("ContentLength") or 0) > self.max_bytes:
                raise ItemTooLarge(f"{item.name} is larger than the download limit")
            self._copy(body.iter_chunks(_CHUNK), out, item)
        except BotoCoreError as error:
            raise ItemUnavailable(f"{item.url} could not be read to the end: {self._reason(error)}") from error
        finally:
            body.close()

    def close(self) -> None:
        """Close the client's connections (a client passed in is left to its owner)."""
        if self._client is not None and self._owns_client:
            self._client.close()
            self._client = None

    def _s3(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            key_id, secret, token = self._credentials
            config = Config(
                connect_timeout=self.timeout,
                read_timeout=self.timeout,
                retries={"total_max_attempts": self.max_attempts, "mode": "standard"},
                s3={"addressing_style": "path" if self.endpoint_url else "auto"},
                user_agent_extra="KnowledgePortal/1.0",
            )
            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name=self.region,
                aws_access_key_id=key_id,
                aws_secret_access_key=secret,
                aws_session_token=token,
                config=config,
            )
        return self._client

    def _reason(self, error: Exception) -> str:
        """A sentence that says why the bucket (or an object) cannot be read."""
        from botocore.exceptions import (
            ClientError,
            ConnectionError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        bucket = f"The bucket {self.bucket}"
        where = self.endpoint_url or "AWS S3"
        if isinstance(error, ClientError):
            code = _code(error)
            if code in _MISSING:
                return f"{bucket} does not exist on {where}"
            if code in _BAD_CREDENTIALS:
                return f"{where} refused the S3 credentials ({code})"
            if code in _REFUSED:
                return f"{where} refused access to the bucket {self.bucket}; check the credentials and its policy"
            if code in ("301", "PermanentRedirect", "AuthorizationHeaderMalformed"):
                return f"{bucket} is in another region than {self.region or 'the one configured'}"
            return f"{bucket} answered {code}: {error.response.get('Error', {}).get('Message', '')}".rstrip(": ")
        if isinstance(error, NoCredentialsError | PartialCredentialsError):
            return "No S3 credentials are configured"
        if isinstance(error, ConnectionError | HTTPClientError):
            return f"The S3 endpoint {where} cannot be reached ({error})"
        return f"{bucket} cannot be read ({error})"


def _code(error: Any) -> str:
    return str(error.response.get("Error", {}).get("Code", "")) or str(
        error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
    )
