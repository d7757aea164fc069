"""Datasets: the bundled MNIST-5k, torchvision sets and image folders, for training, evaluation and the app."""
