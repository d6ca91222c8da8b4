"""Tests for dicom_node.encode.display: what viewers need (names, dates, colours)."""

from __future__ import annotations

import datetime as dt

import pytest
from pydicom.dataset import Dataset

from dicom_node.encode.display import (
    PREDICTION_RGB,
    TRUTH_RGB,
    display_colour,
    series_description,
    stamp_series,
)


def test_series_descriptions_start_with_model_and_kind() -> None:
    assert series_description("PICARD", "heatmap") == "PICARD heatmap"
    text = series_description("PICARD", "lesions", "mean CD, image, M=10, exact >= 13.58")
    assert text == "PICARD lesions (mean CD, image, M=10, exact >= 13.58)"
    assert len(series_description("PICARD", "findings", "x" * 100)) == 64
    # the part a study browser shows (about 24 characters) tells the three apart
    starts = {series_description("PICARD", k, "detail")[:24].split(" (")[0]
              for k in ("heatmap", "lesions", "findings")}
    assert len(starts) == 3
    with pytest.raises(ValueError, match="must not be empty"):
        series_description("PICARD", "")


def test_colours_round_trip_and_differ() -> None:
    for rgb in (PREDICTION_RGB, TRUTH_RGB):
        assert display_colour(rgb).to_rgb() == pytest.approx(rgb, abs=2)
    assert display_colour(PREDICTION_RGB).value != display_colour(TRUTH_RGB).value
    with pytest.raises(ValueError, match="three values in 0..255"):
        display_colour((256, 0, 0))


def test_stamp_series() -> None:
    ds = Dataset()
    stamp_series(ds, dt.datetime(2026, 11, 30, 8, 5, 9))
    assert (ds.SeriesDate, ds.SeriesTime) == ("20261130", "080509")
