"""Sampling: a plan of per-step coefficients and the one step function every sampler shares."""
