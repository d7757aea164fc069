"""Noise-prediction networks: the DDPM UNet, its presets, and the seed's teaching UNet."""
