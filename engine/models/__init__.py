"""Noise-prediction networks: the DDPM UNet, its presets, and the tutorial's teaching UNet (docs/ERRATA.md)."""
