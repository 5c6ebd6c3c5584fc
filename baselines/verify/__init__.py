"""Baseline verifiers."""
