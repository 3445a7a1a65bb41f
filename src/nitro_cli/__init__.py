"""NITRO-D: native integer-only training of deep CNNs and MLPs, as a command-line experiment runner."""

__version__ = "0.1.0"
