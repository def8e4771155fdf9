"""Nipype interfaces wrapping bids_dl functions."""
