"""Managed services (issue 9), the part without servers: names and aliases, and the
Debian package named when a binary is missing (real servers: tests/e2e/test_services.py)."""
import pytest

from dashscale_local import services as svc
from dashscale_local.errors import UsageError


def test_service_names_and_aliases():
    assert svc.parse_names("redis, postgresql redis") == ["redis", "postgres"]
    assert svc.parse_names("") == []
    with pytest.raises(UsageError, match="unknown service 'mysql'.*known: redis, postgres"):
        svc.parse_names("redis,mysql", source="--service")


def test_missing_binaries_name_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setattr(svc.shutil, "which", lambda name: None)
    monkeypatch.setattr(svc.os, "access", lambda path, mode: False)
    monkeypatch.setattr(svc, "POSTGRES_GLOB", str(tmp_path / "none" / "*" / "bin"))
    with pytest.raises(UsageError, match=r"install the Debian package redis-server"):
        svc.Redis(str(tmp_path / ".dashscale"), str(tmp_path)).locate()
    with pytest.raises(UsageError, match=r"install the Debian package postgresql"):
        svc.Postgres(str(tmp_path / ".dashscale"), str(tmp_path)).locate()
