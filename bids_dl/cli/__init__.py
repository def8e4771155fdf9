"""The ``bids_dl`` command line, as fMRIPrep's: ``parser`` (arguments and option groups),
``configure`` (the checked settings and inputs), ``run`` (the participant and group levels),
with ``progress`` (what the user sees), ``interrupt`` (signals), ``outputs`` (what every run
leaves), ``plan`` (``--dry-run``); ``sample`` is ``bids_dl-sample``."""
