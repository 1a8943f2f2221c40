"""The CP's certificate authority: what it issues, where it keeps its key, when it renews."""

from __future__ import annotations

import ipaddress
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from warren.config import Settings
from warren.cp.security import ca as ca_mod
from warren.cp.security.ca import CertificateAuthority, fingerprint_pem


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_host_certificate_names_the_host_and_its_address() -> None:
    ca = CertificateAuthority.generate()
    issued = ca.issue_host_cert("host-0123456789abcdefghijklmno", "10.1.2.3:50051")
    cert = ca.verify(issued.cert_pem)
    assert _cn(cert) == "host-0123456789abcdefghijklmno"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["host-0123456789abcdefghijklmno"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    life = cert.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(days=6, hours=23) < life <= timedelta(days=7)
    assert issued.fingerprint == fingerprint_pem(issued.cert_pem)
    assert "PRIVATE KEY" in issued.key_pem


def test_host_certificate_with_a_dns_address() -> None:
    cert = x509.load_pem_x509_certificate(
        CertificateAuthority.generate().issue_host_cert("host-a", "agent.example.com:50051").cert_pem.encode()
    )
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["host-a", "agent.example.com"]


def test_foreign_certificate_fails_verification() -> None:
    ours, theirs = CertificateAuthority.generate(), CertificateAuthority.generate()
    with pytest.raises(Exception):  # noqa: B017 - cryptography raises a signature/issuer error
        ours.verify(theirs.issue_host_cert("host-a", "127.0.0.1:1").cert_pem)


def test_client_certificate_is_cached_and_renewed_past_half_life(monkeypatch: pytest.MonkeyPatch) -> None:
    ca = CertificateAuthority.generate()
    first = ca.client_cert()
    cert = x509.load_pem_x509_certificate(first.cert_pem.encode())
    assert _cn(cert) == "warren-cp"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert ca.client_cert() is first and ca.client_generation == 1
    real = datetime.now(UTC)
    monkeypatch.setattr(ca_mod, "_utcnow", lambda: real + timedelta(hours=12, minutes=1))
    renewed = ca.client_cert()
    assert renewed is not first and ca.client_generation == 2


def test_generated_ca_persists_with_private_modes(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, jwt_secret="x" * 32)
    a = CertificateAuthority.from_settings(s)
    b = CertificateAuthority.from_settings(s)
    assert a.cert_pem == b.cert_pem
    for name in ("ca.pem", "ca.key"):
        assert stat.S_IMODE((tmp_path / "ca" / name).stat().st_mode) == 0o600


def test_ca_from_settings_files(tmp_path: Path) -> None:
    CertificateAuthority.load_or_create(tmp_path / "x")
    s = Settings(
        home=tmp_path / "other",
        jwt_secret="x" * 32,
        ca_cert=tmp_path / "x" / "ca.pem",
        ca_key=tmp_path / "x" / "ca.key",
    )
    ca = CertificateAuthority.from_settings(s)
    assert ca.cert_pem == (tmp_path / "x" / "ca.pem").read_text()
    assert not (tmp_path / "other").exists()
