"""cnn-cifar-10: a from-scratch CNN library on NumPy/CuPy, with tools to train on CIFAR-10/100."""
__version__ = "0.1.0"
