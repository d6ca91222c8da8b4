"""Association-level access control of the storage SCP, checked with dcmtk echoscu/storescu.

A refused peer must get an A-ASSOCIATE-RJ (rejected-permanent, service-user) with reason 3
(calling AE title) or 7 (called AE title), and the SCP writes a log line and an audit record.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from dicom_node.audit import AuditLog
from dicom_node.config import Settings
from dicom_node.access import AccessPolicy, RejectReason
from dicom_node.scp import StorageSCP
from dicom_node.scu import ExportError, echo
from tests.helpers.netdata import write_multiframe

pytestmark = pytest.mark.skipif(shutil.which("echoscu") is None,
                                reason="dcmtk (storescu/echoscu) is not installed")

CALLING_REJECT = ("Result: Rejected Permanent, Source: Service User",
                  "Reason: Calling AE Title Not Recognized")
CALLED_REJECT = ("Result: Rejected Permanent, Source: Service User",
                 "Reason: Called AE Title Not Recognized")


def echoscu(port: int, *, aet: str = "ECHOSCU",
            aec: str = "PICARD") -> subprocess.CompletedProcess:
    return subprocess.run(["echoscu", "-aet", aet, "-aec", aec, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=30)


def storescu(port: int, path: Path, *, aet: str, aec: str = "PICARD") -> subprocess.CompletedProcess:
    return subprocess.run(["storescu", "-R", "-aet", aet, "-aec", aec, "127.0.0.1", str(port),
                           str(path)], capture_output=True, text=True, timeout=30)


def rejections(scp: StorageSCP) -> list[dict]:
    return [r for r in AuditLog(scp.settings.spool_dir).records() if r["outcome"] == "rejected"]


def test_unknown_calling_ae_title_gets_reason_3(make_scp, caplog) -> None:
    scp = make_scp(allowed_calling_aets=["MODALITY1", "PACS"])
    with caplog.at_level(logging.WARNING, logger="dicom_node.scp"):
        refused = echoscu(scp.port, aet="INTRUDER")
    assert refused.returncode != 0
    for text in CALLING_REJECT:
        assert text in refused.stderr
    assert ("association from INTRUDER (127.0.0.1:" in caplog.text
            and "calling AE title not recognized" in caplog.text and "reason 3" in caplog.text)
    [record] = rejections(scp)
    assert (record["calling_ae"], record["called_ae"], record["peer_host"]) == (
        "INTRUDER", "PICARD", "127.0.0.1")
    assert "reason 3" in record["detail"]
    assert echoscu(scp.port, aet="MODALITY1").returncode == 0
    assert echoscu(scp.port, aet="PACS").returncode == 0


def test_wrong_called_ae_title_gets_reason_7(make_scp, caplog) -> None:
    scp = make_scp()
    with caplog.at_level(logging.WARNING, logger="dicom_node.scp"):
        refused = echoscu(scp.port, aec="ANY-SCP")
    assert refused.returncode != 0
    for text in CALLED_REJECT:
        assert text in refused.stderr
    assert "called AE title not recognized" in caplog.text and "reason 7" in caplog.text
    [record] = rejections(scp)
    assert record["called_ae"] == "ANY-SCP" and "reason 7" in record["detail"]
    assert echoscu(scp.port, aec="PICARD").returncode == 0


def test_called_ae_title_check_can_be_disabled(make_scp) -> None:
    scp = make_scp(require_called_ae_title=False)
    assert echoscu(scp.port, aec="ANY-SCP").returncode == 0
    assert rejections(scp) == []


def test_storescu_from_unknown_ae_stores_nothing(tmp_path: Path, make_scp) -> None:
    scp = make_scp(allowed_calling_aets=["MODALITY1"])
    src = write_multiframe(tmp_path / "in" / "mf.dcm")
    refused = storescu(scp.port, src, aet="INTRUDER")
    assert refused.returncode != 0
    assert CALLING_REJECT[1] in refused.stderr
    assert list((scp.spool.root / "incoming").rglob("*.dcm")) == []
    accepted = storescu(scp.port, src, aet="MODALITY1")
    assert accepted.returncode == 0, accepted.stderr
    assert len(list((scp.spool.root / "incoming").rglob("*.dcm"))) == 1


def test_ae_title_bound_to_source_host(make_scp) -> None:
    # the peer is 127.0.0.1: MODALITY1 may come from there, MODALITY2 only from elsewhere
    scp = make_scp(allowed_calling_aets=["MODALITY1@127.0.0.1", "MODALITY2@10.255.255.1",
                                         "LOCAL@localhost"])
    assert echoscu(scp.port, aet="MODALITY1").returncode == 0
    assert echoscu(scp.port, aet="LOCAL").returncode == 0  # host name resolved at start
    refused = echoscu(scp.port, aet="MODALITY2")
    assert refused.returncode != 0 and CALLING_REJECT[1] in refused.stderr
    assert [r["calling_ae"] for r in rejections(scp)] == ["MODALITY2"]


def test_pynetdicom_scu_reports_the_reject_reason(make_scp) -> None:
    scp = make_scp(allowed_calling_aets=["MODALITY1"])
    with pytest.raises(ExportError, match="rejected \\(Calling AE title not recognised\\)"):
        echo("PICARD", "127.0.0.1", scp.port, calling_ae_title="INTRUDER", timeout=10)
    with pytest.raises(ExportError, match="rejected \\(Called AE title not recognised\\)"):
        echo("OTHER", "127.0.0.1", scp.port, calling_ae_title="MODALITY1", timeout=10)
    echo("PICARD", "127.0.0.1", scp.port, calling_ae_title="MODALITY1")


def test_unresolvable_host_fails_at_start(tmp_path: Path) -> None:
    scp = StorageSCP(Settings(host="127.0.0.1", port=0, spool_dir=tmp_path / "spool",
                              allowed_calling_aets=["M1@no-such-host.invalid"]),
                     lambda ref: None)
    with pytest.raises(ValueError, match="M1@no-such-host.invalid.*cannot resolve"):
        scp.start()


# --------------------------------------------------------------------------- policy unit
@pytest.mark.parametrize("calling, called, host, expected", [
    ("MODALITY1", "PICARD", "10.0.0.5", None),
    ("MODALITY1", "PICARD", "::ffff:10.0.0.5", None),  # IPv4-mapped IPv6 peer
    ("MODALITY1", "PICARD", "10.0.0.6", RejectReason.CALLING_AE_TITLE_NOT_RECOGNIZED),
    ("PACS", "PICARD", "192.168.1.1", None),
    ("modality1", "PICARD", "10.0.0.5", RejectReason.CALLING_AE_TITLE_NOT_RECOGNIZED),
    ("PACS", "NODE", "192.168.1.1", RejectReason.CALLED_AE_TITLE_NOT_RECOGNIZED),
])
def test_access_policy(calling: str, called: str, host: str,
                       expected: RejectReason | None) -> None:
    policy = AccessPolicy.from_settings(Settings(
        allowed_calling_aets=["MODALITY1@10.0.0.5", "PACS"]))
    assert policy.check(calling, called, host) == expected


@pytest.mark.parametrize("entry, message", [
    ("M1@", "empty host"),
    ("@10.0.0.1", "AE title ''"),
    ("A" * 17, "1-16 ASCII"),
])
def test_allow_list_entries_are_validated(entry: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(allowed_calling_aets=[entry])
