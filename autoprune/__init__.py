"""autoprune: compress CNNs with the Deep Compression pipeline, tuned by an Optuna search."""

__version__ = "0.1.0"
