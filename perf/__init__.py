"""Benchmarks that print figures as ratios against a baseline from the same run."""
