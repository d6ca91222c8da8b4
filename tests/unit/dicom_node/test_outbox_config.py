"""Outbox state transitions and settings loading (file, environment, overrides)."""

from __future__ import annotations

import pytest

from dicom_node.config import load_settings
from dicom_node.outbox import Outbox


def test_outbox_failure_dead_letter_revive_delivered(tmp_path):
    outbox = Outbox(tmp_path)
    entry = outbox.open("r1", tmp_path / "results" / "r1")
    assert entry.attempts == 0 and entry.state == "pending"
    assert outbox.open("r1", "elsewhere").result_dir == str(tmp_path / "results" / "r1")
    outbox.record_failure("r1", "ExportError: status 0xA700")
    entry = outbox.record_failure("r1", "ExportError: status 0xB000")
    assert entry.attempts == 2 and entry.last_error.endswith("0xB000")
    dead = outbox.dead_letter("r1")
    assert dead.state == "dead-letter"
    assert not (tmp_path / "outbox" / "r1.json").exists()
    assert (tmp_path / "dead-letter" / "r1.json").exists()
    assert [e.state for e in Outbox(tmp_path).entries()] == ["dead-letter"]  # survives a restart
    revived = outbox.revive("r1")
    assert revived.state == "pending" and revived.attempts == 2
    outbox.delivered("r1")
    assert outbox.entries() == [] and outbox.get("r1") is None


def test_outbox_unknown_result_is_an_error(tmp_path):
    with pytest.raises(KeyError, match="'nope' is not in the outbox"):
        Outbox(tmp_path).record_failure("nope", "x")


def test_settings_environment_beats_file_and_overrides_beat_both(tmp_path, monkeypatch):
    config = tmp_path / "node.yaml"
    config.write_text("ae_title: FROMFILE\nport: 2000\nseries_quiet_seconds: 3\n"
                      "destinations:\n  - {ae_title: PACS, host: 127.0.0.1, port: 4242}\n")
    monkeypatch.setenv("PICARD_PORT", "3000")
    settings = load_settings(config, series_quiet_seconds=7)
    assert settings.ae_title == "FROMFILE"
    assert settings.port == 3000
    assert settings.series_quiet_seconds == 7
    assert settings.destinations[0].port == 4242
    assert settings.embedded


def test_settings_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="bad.yaml' must hold a mapping"):
        load_settings(bad)
    with pytest.raises(ValueError, match="cannot read config file .*missing.yaml"):
        load_settings(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="AE title"):
        load_settings(None, ae_title="THIS_AE_TITLE_IS_TOO_LONG")
