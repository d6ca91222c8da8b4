"""Viewer test: the scored study in OHIF, in headless chromium."""
