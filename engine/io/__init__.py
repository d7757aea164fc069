"""Files in and out: the model file, diffusers interop, and image conversion."""
