"""The control plane's own certificate authority for CP <-> agent mutual TLS (docs/spec.md §9.7,
docs/design.md §4).

* The CA is an ECDSA P-256 key and a self-signed certificate, either given as settings
  (``ca_cert`` / ``ca_key``: what several CP replicas share) or generated once under
  ``<home>/ca/`` (files 0600; a file lock keeps two processes on one home from racing).
* Each host gets a 7-day **server** certificate at registration and at every refresh: CN and a
  DNS SAN ``host-…`` (its identity: the CP dials with that name as the TLS target name, so the
  ordinary hostname check *is* the "is this the host I meant to reach" check), plus the IP or DNS
  name of its address. Extended key usage serverAuth only, so a host cannot use its certificate
  to call another agent.
* The CP calls agents with a 24 h **client** certificate (CN ``warren-cp``, clientAuth only),
  renewed once less than half of its life is left.

Certificate validity uses the real wall clock, not ``warren.clock``: the TLS stacks that check
these certificates read the system time, and a test moving the CP's clock must not produce
certificates that are "not yet valid" to them.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from warren import ids
from warren.config import Settings

HOST_CERT_TTL = timedelta(days=7)
CLIENT_CERT_TTL = timedelta(hours=24)
CA_TTL = timedelta(days=3650)
CP_CLIENT_CN = "warren-cp"
# Certificates start a little in the past so a peer whose clock lags slightly accepts them.
_BACKDATE = timedelta(minutes=5)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime,
    not_after: datetime,
    *,
    ca: bool,
) -> x509.CertificateBuilder:
    """What every certificate Warren makes has: valid from a little before ``now`` (clock skew)
    to ``not_after``; the CA signs certificates, the others agree keys (ECDHE)."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=ca,
                crl_sign=ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=not ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def fingerprint(cert: x509.Certificate) -> str:
    """Hex SHA-256 over the DER certificate, as stored in ``hosts.cert_fingerprint``."""
    return cert.fingerprint(hashes.SHA256()).hex()


def fingerprint_pem(cert_pem: bytes | str) -> str:
    data = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    return fingerprint(x509.load_pem_x509_certificate(data))


def address_host(address: str) -> str:
    """The host part of ``host:port`` / ``[v6]:port`` / ``host``."""
    a = address.strip()
    if a.startswith("["):
        return a[1 : a.index("]")]
    if a.count(":") == 1:
        return a.rsplit(":", 1)[0]
    return a


def names_a_host(name: str) -> bool:
    """Whether ``name`` is in the host ids' namespace (``host-…``, in any case: DNS names match
    case-insensitively). The CP checks an agent's certificate by its host id, so only that host's
    own certificate may carry one: a (BYOC) host registered with the address ``host-<another
    host's id>:port`` was issued a certificate the CP accepts as that other host's."""
    return name.lower().startswith(ids.Kind.HOST.value)


@dataclass(frozen=True)
class IssuedCert:
    cert_pem: str
    key_pem: str
    fingerprint: str
    expires_at: datetime


class CertificateAuthority:
    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self._key = key
        self._cert = cert
        self.cert_pem: str = cert.public_bytes(serialization.Encoding.PEM).decode()
        self._client: IssuedCert | None = None
        self._client_lock = threading.Lock()
        # Bumped on every client-certificate renewal so the client pool can rebuild channels.
        self.client_generation = 0

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def from_settings(cls, settings: Settings) -> CertificateAuthority:
        if settings.ca_cert or settings.ca_key:
            if not (settings.ca_cert and settings.ca_key):
                raise RuntimeError("WARREN_CA_CERT and WARREN_CA_KEY must be set together")
            return cls.load(Path(settings.ca_cert), Path(settings.ca_key))
        return cls.load_or_create(Path(settings.home) / "ca")

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> CertificateAuthority:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise RuntimeError(f"{key_path}: the CA key must be an EC key")
        return cls(key, cert)

    @classmethod
    def load_or_create(cls, directory: Path) -> CertificateAuthority:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        cert_path, key_path = directory / "ca.pem", directory / "ca.key"
        with open(directory / ".lock", "a+") as lock:
            # Two CP processes sharing one home must end up with the same CA.
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (cert_path.exists() and key_path.exists()):
                ca = cls.generate()
                _write_private(key_path, _key_pem(ca._key))
                _write_private(cert_path, ca.cert_pem.encode())
                return ca
        return cls.load(cert_path, key_path)

    @classmethod
    def generate(cls, common_name: str = "Warren internal CA") -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _utcnow()
        cert = (
            _builder(name, name, key.public_key(), now, now + CA_TTL, ca=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    # -- issuing ---------------------------------------------------------------------------
    def _issue(
        self, common_name: str, sans: list[x509.GeneralName], usage: x509.ObjectIdentifier, ttl: timedelta
    ) -> IssuedCert:
        key = ec.generate_private_key(ec.SECP256R1())
        now = _utcnow()
        not_after = now + ttl
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = (
            _builder(subject, self._cert.subject, key.public_key(), now, not_after, ca=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return IssuedCert(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
            key_pem=_key_pem(key).decode(),
            fingerprint=fingerprint(cert),
            expires_at=not_after.replace(microsecond=0),
        )

    def issue_host_cert(self, host_id: str, address: str) -> IssuedCert:
        """A server certificate for host ``host-…`` reachable at ``address`` (``ip:port``)."""
        sans: list[x509.GeneralName] = [x509.DNSName(host_id)]
        host = address_host(address) if address else ""
        if host:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                if not names_a_host(host):  # its own id is there already; another's never
                    sans.append(x509.DNSName(host))
        return self._issue(host_id, sans, ExtendedKeyUsageOID.SERVER_AUTH, HOST_CERT_TTL)

    def client_cert(self) -> IssuedCert:
        """The CP's client certificate; renewed once less than half of its 24 h is left."""
        with self._client_lock:
            c = self._client
            if c is None or c.expires_at - _utcnow() < CLIENT_CERT_TTL / 2:
                self._client = c = self._issue(
                    CP_CLIENT_CN, [], ExtendedKeyUsageOID.CLIENT_AUTH, CLIENT_CERT_TTL
                )
                self.client_generation += 1
            return c

    def verify(self, cert_pem: str) -> x509.Certificate:
        """Check that ``cert_pem`` was signed by this CA (raises on a foreign certificate)."""
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        cert.verify_directly_issued_by(self._cert)
        return cert


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
