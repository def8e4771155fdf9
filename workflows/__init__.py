"""Nipype workflows of bids_dl, installed as ``bids_dl.workflows``."""
