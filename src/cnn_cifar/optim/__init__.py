"""Optimizers, learning-rate schedules and dropout schedules."""
from .optimizers import SGD, Adam, Optimizer

__all__ = ["SGD", "Adam", "Optimizer"]
