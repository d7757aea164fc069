"""Files shipped with the engine: the default model, MNIST-5k and the digit classifier."""

from pathlib import Path

ASSET_DIR = Path(__file__).parent
