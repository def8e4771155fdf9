"""bids_dl: a BIDS-App chaining classical preprocessing with deep-learning analyses."""

__version__ = "0.2.0"
