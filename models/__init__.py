"""Deep-learning layer of bids_dl: plain torch + numpy + nibabel, usable on its own.

It imports nothing from the rest of the project, nor nipype or pybids.
"""
