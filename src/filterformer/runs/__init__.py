"""Runs: a config turned into objects; run folders created, trained, loaded and read."""
