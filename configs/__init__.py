"""Hydra configs, shipped inside the wheel as package data."""
