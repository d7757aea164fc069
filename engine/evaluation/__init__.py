"""Evaluation: bits/dim, classifier-based sample metrics, memorization, and the sample cache."""
