"""Follow-up of one patient over time: ``registration`` (the follow-up onto the baseline, and whether to trust
it), ``comparison`` (what changed, measured in one space, with the model's repeatability), ``reports`` (the files and
DICOM reports) and ``run`` (the use case every front end calls)."""
