"""Pure parts of the S3 backend: URL parsing, the ETag computed while reading,
credentials from the environment (no server: the S3 behaviour itself is
tested against a real one in tests/cluster/modelstore_s3)."""

from __future__ import annotations

import hashlib
import io

import pytest

from loraplane.modelstore import StoreError
from loraplane.modelstore.s3 import _PartHasher, client_from_env, is_s3_url, parse_s3_url


def test_parse_s3_url():
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b")
    assert is_s3_url("s3://b/x") and not is_s3_url("/models") and not is_s3_url(None)
    for bad in ("/models", "http://b/x", "s3:///x", "s3://b/a/../c", "s3://b/a//c"):
        with pytest.raises(StoreError):
            parse_s3_url(bad)


@pytest.mark.parametrize("size", [0, 1, 5 << 20, (5 << 20) + 1, 3 * (5 << 20), 3 * (5 << 20) + 7])
def test_etag_matches_the_s3_multipart_rule(size):
    part = 5 << 20
    data = bytes((i * 7) % 251 for i in range(size))
    r = _PartHasher(io.BytesIO(data), part)
    while r.read(1 << 20 if size % 3 else 777_777):  # odd read sizes straddle part boundaries
        pass
    parts = [data[i:i + part] for i in range(0, size, part)] or [b""]
    want = hashlib.md5(data).hexdigest() if len(parts) == 1 else \
        hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + f"-{len(parts)}"
    assert r.etag() == want and r.sha.hexdigest() == hashlib.sha256(data).hexdigest() and r.size == size


def test_credentials_are_required_and_the_secret_is_never_in_errors():
    with pytest.raises(StoreError, match="AWS_ACCESS_KEY_ID") as e:
        client_from_env({"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value"})
    assert "s3cr3t-value" not in str(e.value)
    with pytest.raises(StoreError, match="must be http"):
        client_from_env({"AWS_ENDPOINT_URL": "ftp://x", "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
    c = client_from_env({"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ACCESS_KEY_ID": "a",
                         "AWS_SECRET_ACCESS_KEY": "s3cr3t-value"})
    assert "s3cr3t-value" not in repr(c)
