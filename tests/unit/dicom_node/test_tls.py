"""DICOM TLS on both sides, against dcmtk's TLS-enabled echoscu/storescu/storescp.

A test CA, a second (untrusted) CA and their certificates are made in the test with the
``openssl`` command line tool.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydantic import ValidationError

from dicom_node.audit import AuditLog
from dicom_node.config import Destination, Settings
from dicom_node.scp import StorageSCP
from dicom_node.scu import ExportError, echo, echo_destination, send_datasets, send_to_destination
from dicom_node.tls import TLSConfigError, client_context
from tests.helpers.netdata import write_multiframe

pytestmark = pytest.mark.skipif(
    shutil.which("echoscu") is None or shutil.which("openssl") is None,
    reason="needs dcmtk (echoscu, storescu, storescp) and the openssl command")


@dataclass(frozen=True)
class Pki:
    """PEM files: a trusted CA with server and client certificates, and a rogue CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_client_cert: Path
    rogue_client_key: Path
    rogue_server_cert: Path
    rogue_server_key: Path


def _openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {result.stderr}")


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def _make_leaf(directory: Path, name: str, ca: tuple[Path, Path], *,
               server: bool) -> tuple[Path, Path]:
    cert, key, csr = (directory / f"{name}.crt", directory / f"{name}.key",
                      directory / f"{name}.csr")
    ext = directory / f"{name}.ext"
    usage = "serverAuth" if server else "clientAuth"
    ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                   f"extendedKeyUsage={usage}\n"
                   + ("subjectAltName=IP:127.0.0.1,DNS:localhost\n" if server else ""))
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
             "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = _make_ca(d, "test-ca")
    rogue = _make_ca(d, "rogue-ca")
    server = _make_leaf(d, "node-server", ca, server=True)
    client = _make_leaf(d, "modality-client", ca, server=False)
    rogue_client = _make_leaf(d, "rogue-client", rogue, server=False)
    rogue_server = _make_leaf(d, "rogue-server", rogue, server=True)
    return Pki(ca=ca[0], server_cert=server[0], server_key=server[1], client_cert=client[0],
               client_key=client[1], rogue_ca=rogue[0], rogue_client_cert=rogue_client[0],
               rogue_client_key=rogue_client[1], rogue_server_cert=rogue_server[0],
               rogue_server_key=rogue_server[1])


def dcmtk(tool: str, port: int, *args: str, files: tuple[Path, ...] = ()
          ) -> subprocess.CompletedProcess:
    cmd = [tool, *args, "-aec", "PICARD", "127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20)


def tls_client(pki: Pki, *, cert: Path | None = None, key: Path | None = None,
               ca: Path | None = None) -> tuple[str, ...]:
    """dcmtk options for a TLS client presenting `cert` and trusting `ca`."""
    return ("+tls", str(key or pki.client_key), str(cert or pki.client_cert),
            "+cf", str(ca or pki.ca))


def audit(scp: StorageSCP) -> list[dict]:
    return AuditLog(scp.settings.spool_dir).records()


def mutual_tls_scp(make_scp, pki: Pki, handshake_seconds: float = 5) -> StorageSCP:
    return make_scp(tls_cert=pki.server_cert, tls_key=pki.server_key, tls_ca=pki.ca,
                    tls_handshake_seconds=handshake_seconds)


# --------------------------------------------------------------------------- SCP side
def test_trusted_client_certificate_is_accepted(tmp_path: Path, make_scp, pki: Pki) -> None:
    scp = mutual_tls_scp(make_scp, pki)
    result = dcmtk("echoscu", scp.port, *tls_client(pki))
    assert result.returncode == 0, result.stderr
    src = write_multiframe(tmp_path / "in" / "mf.dcm")
    sent = dcmtk("storescu", scp.port, "-R", *tls_client(pki), files=(src,))
    assert sent.returncode == 0, sent.stderr
    [received] = (scp.spool.root / "incoming").rglob("*.dcm")
    assert pydicom.dcmread(received).SOPInstanceUID == pydicom.dcmread(src).SOPInstanceUID
    deadline = time.monotonic() + 5  # records are written when the connection closes
    while len(audit(scp)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    records = [r for r in audit(scp) if r["outcome"] == "released"]
    assert [r["tls"] for r in records] == [True, True]
    assert {r["tls_peer"] for r in records} == {"modality-client"}
    assert [r["stored"] for r in records] == [0, 1]


def test_client_certificate_from_untrusted_ca_is_refused(make_scp, pki: Pki) -> None:
    scp = mutual_tls_scp(make_scp, pki)
    result = dcmtk("echoscu", scp.port, *tls_client(pki, cert=pki.rogue_client_cert,
                                                       key=pki.rogue_client_key))
    assert result.returncode != 0
    assert "TLS" in result.stderr or "Association Request Failed" in result.stderr
    deadline = time.monotonic() + 5
    while not audit(scp) and time.monotonic() < deadline:
        time.sleep(0.05)
    [record] = audit(scp)
    assert record["outcome"] == "tls handshake failed" and record["tls"] is True
    assert "certificate" in record["detail"].lower()
    assert dcmtk("echoscu", scp.port, *tls_client(pki)).returncode == 0  # still serving


def test_client_without_certificate_is_refused_when_ca_is_set(make_scp, pki: Pki) -> None:
    scp = mutual_tls_scp(make_scp, pki)
    result = dcmtk("echoscu", scp.port, "+tla", "+cf", str(pki.ca))
    assert result.returncode != 0
    # without tls_ca, anonymous-client TLS is fine
    open_scp = make_scp(tls_cert=pki.server_cert, tls_key=pki.server_key,
                        spool_dir=scp.settings.spool_dir.parent / "spool2")
    result = dcmtk("echoscu", open_scp.port, "+tla", "+cf", str(pki.ca))
    assert result.returncode == 0, result.stderr


def test_plain_tcp_to_tls_port_fails(make_scp, pki: Pki) -> None:
    scp = mutual_tls_scp(make_scp, pki)
    result = dcmtk("echoscu", scp.port, "-to", "5")
    assert result.returncode != 0
    with pytest.raises(ExportError):
        echo("PICARD", "127.0.0.1", scp.port, timeout=5)
    assert dcmtk("echoscu", scp.port, *tls_client(pki)).returncode == 0


def test_client_refuses_server_certificate_it_does_not_trust(make_scp, pki: Pki) -> None:
    scp = make_scp(tls_cert=pki.rogue_server_cert, tls_key=pki.rogue_server_key)
    result = dcmtk("echoscu", scp.port, *tls_client(pki))
    assert result.returncode != 0
    with pytest.raises(ExportError):
        echo("PICARD", "127.0.0.1", scp.port, timeout=5,
             tls=(client_context(ca=pki.ca), "127.0.0.1"))


def test_silent_client_does_not_block_others(make_scp, pki: Pki) -> None:
    # pynetdicom's own server handshakes in its accept loop: this echo would hang there
    scp = mutual_tls_scp(make_scp, pki, handshake_seconds=3)
    with socket.create_connection(("127.0.0.1", scp.port)) as idle:  # never says anything
        start = time.monotonic()
        result = dcmtk("echoscu", scp.port, *tls_client(pki))
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - start < 2.5  # not stuck behind the silent handshake
        idle.settimeout(10)
        assert idle.recv(1) == b""  # closed by the SCP after tls_handshake_seconds
    assert any(r["outcome"] == "tls handshake failed" for r in audit(scp))


def test_unusable_certificate_fails_at_start(tmp_path: Path, pki: Pki) -> None:
    settings = Settings(host="127.0.0.1", port=0, spool_dir=tmp_path / "spool",
                        tls_cert=pki.ca, tls_key=pki.client_key)  # key does not match
    with pytest.raises(TLSConfigError, match="cannot load TLS certificate"):
        StorageSCP(settings, lambda ref: None).start()


def test_tls_settings_are_validated() -> None:
    with pytest.raises(ValidationError, match="tls_cert and tls_key go together"):
        Settings(tls_cert="node.crt")
    with pytest.raises(ValidationError, match="tls_ca .* needs tls_cert"):
        Settings(tls_ca="ca.pem")
    with pytest.raises(ValidationError, match="set tls: true"):
        Destination(ae_title="PACS", host="pacs", port=104, tls_ca="ca.pem")


# --------------------------------------------------------------------------- SCU side
@pytest.fixture
def tls_storescp(tmp_path: Path, pki: Pki) -> Iterator[tuple[int, Path]]:
    """dcmtk storescp speaking TLS, requiring a client certificate from the test CA."""
    out = tmp_path / "storescp"
    out.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        ["storescp", "-aet", "PACS", "+tls", str(pki.server_key), str(pki.server_cert),
         "+cf", str(pki.ca), "-od", str(out), "--accept-all", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    yield port, out
    proc.terminate()
    proc.wait(timeout=10)


def test_scu_sends_over_tls_to_dcmtk(tmp_path: Path, tls_storescp, pki: Pki) -> None:
    port, out = tls_storescp
    dest = Destination(ae_title="PACS", host="127.0.0.1", port=port, tls=True, tls_ca=pki.ca,
                       tls_cert=pki.client_cert, tls_key=pki.client_key)
    echo_destination(dest, calling_ae_title="PICARD")
    files = [write_multiframe(tmp_path / f"mf{i}.dcm", frames=2) for i in range(2)]
    send_to_destination(files, dest, calling_ae_title="PICARD")
    assert len(list(out.iterdir())) == 2
    # the server certificate does not chain to a CA we trust: nothing is sent
    wrong_ca = dest.model_copy(update={"tls_ca": pki.rogue_ca})
    with pytest.raises(ExportError):
        send_to_destination(files, wrong_ca, calling_ae_title="PICARD")
    # the name in the server certificate must match
    wrong_name = dest.model_copy(update={"tls_server_name": "pacs.example"})
    with pytest.raises(ExportError):
        echo_destination(wrong_name)
    # a client certificate storescp does not trust
    rogue_client = dest.model_copy(update={"tls_cert": pki.rogue_client_cert,
                                           "tls_key": pki.rogue_client_key})
    with pytest.raises(ExportError):
        send_to_destination(files, rogue_client, calling_ae_title="PICARD")
    assert len(list(out.iterdir())) == 2


def test_scu_and_scp_over_mutual_tls(tmp_path: Path, make_scp, pki: Pki) -> None:
    scp = mutual_tls_scp(make_scp, pki)
    src = write_multiframe(tmp_path / "mf.dcm")
    tls = (client_context(ca=pki.ca, cert=pki.client_cert, key=pki.client_key), "localhost")
    send_datasets([src], ae_title="PICARD", host="127.0.0.1", port=scp.port,
                  calling_ae_title="PICARD", tls=tls)
    assert len(list((scp.spool.root / "incoming").rglob("*.dcm"))) == 1
    with pytest.raises(ExportError):  # plain TCP to the same SCP
        send_datasets([src], ae_title="PICARD", host="127.0.0.1", port=scp.port,
                      calling_ae_title="PICARD", timeout=5)
