"""A throwaway CA and the certificates and keys the control plane needs, made with the openssl CLI.

EC P-256 keys keep this fast; every file is created once and then reused, so restarting a
cluster keeps the kubeconfigs that are already handed out valid.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

# An empty config so `req -x509` adds only the extensions given here (the distro's default
# config would mark every leaf certificate as a CA).
_MIN_CONFIG = "[req]\ndistinguished_name = dn\n[dn]\n"
_DAYS = "3650"
_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(pki: Path, *args: str) -> None:
    proc = subprocess.run(["openssl", *args], cwd=pki, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


def _leaf(pki: Path, name: str, subject: str, *extensions: str) -> None:
    if (pki / f"{name}.crt").exists():
        return
    ext = [a for e in ("basicConstraints=critical,CA:FALSE", *extensions) for a in ("-addext", e)]
    _openssl(pki, "req", "-x509", "-config", "openssl.cnf", *_EC, "-days", _DAYS, "-subj", subject,
             "-CA", "ca.crt", "-CAkey", "ca.key", "-keyout", f"{name}.key", "-out", f"{name}.crt", *ext)


def ensure_ca(pki: Path) -> None:
    """The CA; call it first, the other functions sign with it."""
    pki.mkdir(parents=True, exist_ok=True)
    (pki / "openssl.cnf").write_text(_MIN_CONFIG)
    if not (pki / "ca.crt").exists():
        _openssl(pki, "req", "-x509", "-config", "openssl.cnf", *_EC, "-days", _DAYS,
                 "-subj", "/CN=batchline-local-ca", "-keyout", "ca.key", "-out", "ca.crt",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature")


def ensure_serving_cert(pki: Path, name: str, dns: list[str], ips: list[str]) -> None:
    san = ",".join([*(f"DNS:{d}" for d in dns), *(f"IP:{ip}" for ip in ips)])
    _leaf(pki, name, f"/CN={name}", "keyUsage=critical,digitalSignature,keyEncipherment",
          "extendedKeyUsage=serverAuth", f"subjectAltName={san}")


def ensure_client_cert(pki: Path, name: str, user: str, groups: list[str]) -> None:
    """A client certificate: Kubernetes reads the user from CN and the groups from O."""
    subject = "".join(f"/O={g}" for g in groups) + f"/CN={user}"
    _leaf(pki, name, subject, "keyUsage=critical,digitalSignature,keyEncipherment",
          "extendedKeyUsage=clientAuth")


def ensure_service_account_keys(pki: Path) -> None:
    """The key pair that signs and verifies service-account tokens."""
    if not (pki / "sa.key").exists():
        _openssl(pki, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "sa.key")
    if not (pki / "sa.pub").exists():
        _openssl(pki, "pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub")
