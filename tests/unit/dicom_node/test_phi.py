"""No attribute value in log lines (finding 2 of issue 11): exception descriptions, tracebacks,
library messages and warnings."""

from __future__ import annotations

import io
import logging
import warnings

import pytest

from dicom_node.phi import (SafeFormatter, WithholdQuotingText, describe_exception,
                            format_exception_safely, install_log_guard)
from dicom_node.volume import VolumeError

SECRET = "1961-07-23"


def _raise_pydicom_style() -> None:
    from pydicom.valuerep import DA

    DA(SECRET)


def test_describe_exception_withholds_foreign_messages() -> None:
    with pytest.raises(ValueError) as info:
        _raise_pydicom_style()
    text = describe_exception(info.value)
    assert SECRET not in text
    assert text.startswith("ValueError at valuerep.py:") and "withheld" in text
    assert describe_exception(VolumeError("missing PixelSpacing")) == \
        "VolumeError: missing PixelSpacing"
    assert "No such file" in describe_exception(FileNotFoundError(2, "No such file", "/x"))


def test_tracebacks_keep_frames_and_drop_quoting_messages() -> None:
    try:
        try:
            _raise_pydicom_style()
        except ValueError as exc:
            raise VolumeError("malformed header") from exc
    except VolumeError as exc:
        text = format_exception_safely(exc)
    assert SECRET not in text
    assert "_raise_pydicom_style" in text and "VolumeError: malformed header" in text


def _guarded_logger(stream: io.StringIO) -> logging.Logger:
    logger = logging.getLogger("test_phi_guard")
    logger.handlers = []
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    logger.addHandler(handler)
    install_log_guard(logger, mapping_args=("exc",))
    return logger


def test_guarded_handlers_never_print_the_value() -> None:
    stream = io.StringIO()
    logger = _guarded_logger(stream)
    try:
        _raise_pydicom_style()
    except ValueError as exc:
        logger.error("encode failed", exc_info=True)
        logger.error("Task %(name)s raised: %(exc)s", {"name": "picard.encode", "exc": repr(exc)})
    quoting = logging.LogRecord("pydicom", logging.WARNING, "valuerep.py", 440,
                                f"Invalid value for VR DA: '{SECRET}'.", (), None)
    logger.handle(quoting)
    text = stream.getvalue()
    assert SECRET not in text
    assert "encode failed" in text and "Traceback" in text and "picard.encode" in text
    assert "from pydicom at valuerep.py:440" in text


def test_python_warnings_are_routed_and_withheld(caplog) -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    handler = logging.StreamHandler(stream)
    root.addHandler(handler)
    try:
        install_log_guard()
        from pydicom.valuerep import validate_value

        with warnings.catch_warnings():
            warnings.simplefilter("always")
            validate_value("DA", SECRET, 1)  # pydicom warns and logs, quoting the value
    finally:
        root.removeHandler(handler)
        logging.captureWarnings(False)
    text = stream.getvalue()
    assert SECRET not in text and "withheld" in text


def test_rejections_named_as_kept_keep_their_text() -> None:
    keep = WithholdQuotingText(mapping_args=("exc",), keep_when={"description": ("rejected",)})
    args = {"name": "picard.encode", "description": "rejected", "exc": "Reject('ok')"}
    record = logging.LogRecord("celery.app.trace", logging.WARNING, "trace.py", 1,
                               "Task %(name)s %(exc)s", (args,), None)
    assert keep.filter(record) and record.getMessage() == "Task picard.encode Reject('ok')"
    args = {**args, "description": "raised unexpected", "exc": f"ValueError('{SECRET}')"}
    record = logging.LogRecord("celery.app.trace", logging.ERROR, "trace.py", 1,
                               "Task %(name)s %(exc)s", (args,), None)
    assert keep.filter(record) and SECRET not in record.getMessage()


def test_filter_leaves_other_records_alone() -> None:
    record = logging.LogRecord("dicom_node.scp", logging.INFO, "scp.py", 1,
                               "stored %s", ("1.2.3",), None)
    assert WithholdQuotingText().filter(record) and record.getMessage() == "stored 1.2.3"
    assert isinstance(SafeFormatter("%(message)s").format(record), str)
