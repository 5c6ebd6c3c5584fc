"""Baseline trainers."""
