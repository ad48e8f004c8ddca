import pytest

from dashscale_local.errors import UsageError
from dashscale_local.sizes import (DEFAULT_MEMORY_LIMIT, MIN_MEMORY_LIMIT, format_size,
                                   parse_limits, parse_size)

Ki, Mi, Gi, Ti = 2**10, 2**20, 2**30, 2**40


@pytest.mark.parametrize("text, expected", [
    ("0", 0), ("123", 123), ("123B", 123), ("123b", 123),
    ("1K", 1000), ("1k", 1000), ("1KB", 1000), ("1kb", 1000),
    ("1Ki", Ki), ("1KiB", Ki), ("1kib", Ki),
    ("512M", 512 * 10**6), ("512MB", 512 * 10**6), ("512mb", 512 * 10**6),
    ("512Mi", 512 * Mi), ("512MiB", 512 * Mi), ("512mib", 512 * Mi),
    ("8G", 8 * 10**9), ("8g", 8 * 10**9), ("8GB", 8 * 10**9),
    ("8Gi", 8 * Gi), ("8GiB", 8 * Gi), ("8GIB", 8 * Gi),
    ("2T", 2 * 10**12), ("2TB", 2 * 10**12), ("2Ti", 2 * Ti), ("2TiB", 2 * Ti),
    ("1.5GiB", 3 * Gi // 2), ("0.5Gi", Gi // 2), (".5K", 500), ("2.GiB", 2 * Gi),
    ("  2 GiB  ", 2 * Gi), ("0.1", 1),  # fractions of a byte round up
    ("1.1G", 1_100_000_000),  # exact, no float error
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text, fragment", [
    ("eightGB", "invalid size 'eightGB' (use e.g. 512MiB, 2GiB, 8G)"),
    ("", "empty size"),
    ("   ", "empty size"),
    ("-1GiB", "invalid size '-1GiB': sizes cannot be negative"),
    ("2GX", "unknown unit 'GX'"),
    ("2PiB", "unknown unit 'PiB'"),
    ("512m", "ambiguous size '512m'"),
    ("1e9", "invalid size '1e9' (use e.g."),
    ("GiB", "invalid size 'GiB'"),
    ("1,5GiB", "invalid size '1,5GiB'"),
    ("1..5G", "invalid size '1..5G'"),
    ("+1G", "invalid size '+1G'"),
    ("2 G i B", "invalid size '2 G i B'"),
])
def test_parse_size_errors(text, fragment):
    with pytest.raises(UsageError) as e:
        parse_size(text, "--memory-limit")
    assert str(e.value).startswith("--memory-limit: ")
    assert fragment in str(e.value)
    assert e.value.exit_code == 2


def test_parse_size_example_message():
    with pytest.raises(UsageError) as e:
        parse_size("eightGB")
    assert str(e.value) == "--memory-limit: invalid size 'eightGB' (use e.g. 512MiB, 2GiB, 8G)"


def test_ambiguous_m_suggests_both():
    with pytest.raises(UsageError) as e:
        parse_size("512m")
    assert "512Mi" in str(e.value) and "512M" in str(e.value)


TYPES = ["web", "worker"]


def test_constants():
    assert DEFAULT_MEMORY_LIMIT == 8 * Gi
    assert MIN_MEMORY_LIMIT == 64 * Mi


@pytest.mark.parametrize("spec, expected", [
    (None, {"web": 8 * Gi, "worker": 8 * Gi}),
    ("2GiB", {"web": 2 * Gi, "worker": 2 * Gi}),
    ("web=2GiB", {"web": 2 * Gi, "worker": 8 * Gi}),
    ("web=2GiB,worker=512MiB", {"web": 2 * Gi, "worker": 512 * Mi}),
    (" web = 2GiB , worker = 1G ", {"web": 2 * Gi, "worker": 10**9}),
    ("all=1Gi,web=2Gi", {"web": 2 * Gi, "worker": Gi}),
    ("web=2Gi,all=1Gi", {"web": 2 * Gi, "worker": Gi}),
    ("64Mi", {"web": 64 * Mi, "worker": 64 * Mi}),
])
def test_parse_limits(spec, expected):
    assert parse_limits(spec, TYPES) == expected


@pytest.mark.parametrize("spec, fragment", [
    ("wbe=2GiB", "unknown process type 'wbe' (Procfile has: web, worker)"),
    ("web=eight", "invalid size 'eight'"),
    ("web=2GiB,worker", "invalid item 'worker'"),
    ("=2GiB", "invalid item '=2GiB'"),
    ("web=1Gi,web=2Gi", "'web' is given twice"),
    ("web=", "empty size"),
    ("32MiB", "below the minimum of 64 MiB"),
    ("worker=63Mi", "worker: limit 63 MiB is below the minimum of 64 MiB"),
    ("0", "limit 0 B is below the minimum"),
])
def test_parse_limits_errors(spec, fragment):
    with pytest.raises(UsageError) as e:
        parse_limits(spec, TYPES, "--memory-limit")
    assert str(e.value).startswith("--memory-limit: ")
    assert fragment in str(e.value)


def test_parse_limits_source():
    with pytest.raises(UsageError) as e:
        parse_limits("x=1G", TYPES, "app.toml")
    assert str(e.value).startswith("app.toml: ")


@pytest.mark.parametrize("n, text", [
    (0, "0 B"), (1023, "1023 B"), (1024, "1 KiB"), (1536, "1.5 KiB"),
    (512 * Mi, "512 MiB"), (3 * Gi // 2, "1.5 GiB"), (8 * Gi, "8 GiB"),
    (Gi - 1, "1 GiB"),  # rounds up into the next unit instead of "1024.0 MiB"
    (10**9, "953.7 MiB"), (2 * Ti, "2 TiB"),
])
def test_format_size(n, text):
    assert format_size(n) == text
