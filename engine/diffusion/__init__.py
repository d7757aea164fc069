"""Diffusion math: noise schedules, respacing, the Gaussian forward/posterior, losses and the VLB."""
