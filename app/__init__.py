"""FastAPI server that streams reverse diffusion from a resident model."""
