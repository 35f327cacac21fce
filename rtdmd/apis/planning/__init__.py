"""Building blocks of the memory planner (:mod:`rtdmd.apis.plan`): real-size modules without
weights (``meta``), the memory tracker (``tracker``), the phases of an iteration (``phases``),
the reward models (``rewards``), per-rank accounting (``accounting``) and output (``report``)."""
