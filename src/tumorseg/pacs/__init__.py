"""A DICOMweb archive (PACS): ``config`` (URL, credentials, checked UIDs and the one-line errors), ``transport``
(bounded, deadline-watched HTTP), ``client`` (QIDO-RS search, WADO-RS retrieval instance by instance, STOW-RS
store) and ``usecases`` (open, segment and store a study: what the CLI, the app and follow-up call). The protocol is
dicomweb-client's; what is written is highdicom's (``studies``)."""
