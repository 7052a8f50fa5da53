import pytest
from fastapi import HTTPException

from api.routes.checkpoints import byte_range


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-99", (0, 99)),
        ("bytes=100-", (100, 999)),
        ("bytes=-50", (950, 999)),
        ("bytes=-5000", (0, 999)),
        ("bytes=900-5000", (900, 999)),
        ("bytes=0-1,5-6", None),  # several ranges: the whole file
        ("items=0-1", None),
    ],
)
def test_byte_range(header: str | None, expected: tuple[int, int] | None) -> None:
    assert byte_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5-2"])
def test_unsatisfiable_ranges_are_416(header: str) -> None:
    with pytest.raises(HTTPException) as raised:
        byte_range(header, 1000)
    assert raised.value.status_code == 416
    assert raised.value.headers == {"Content-Range": "bytes */1000"}
