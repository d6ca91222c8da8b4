"""PICARD model core: completion network, critics, MCD scoring, heatmaps, bundles."""
