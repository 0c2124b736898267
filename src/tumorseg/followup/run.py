"""The follow-up use case, one function whichever front end asks (the CLI, REST, a PACS)."""

from __future__ import annotations

from pathlib import Path

from ..errors import FollowUpError
from ..studies import Study, read_study
from .comparison import FollowUp, check_interval, compare
from .reports import check_out, dicom_reports, followup_line, write_outputs


def run(
    predictor,
    sources: list,
    out=None,
    *,
    pacs=None,
    prior: bool = False,
    store: bool = False,
    interval=None,
    force: bool = False,
    spacing=None,
    on_progress=None,
    segment=None,
    say=lambda line: None,
) -> tuple[FollowUp, Path | None]:
    """The follow-up use case, whichever front end asks (the CLI, the app's job, a PACS): check what was given (the
    interval, an ``out`` that could touch an input) before any work, read the two studies (paths, Studies already
    read, or a PACS's studies, with ``prior`` the patient's latest earlier one), compare, write the outputs into
    ``out`` (None: write nothing, the app holds the result) and, with ``store``, send each time point's SEG and SR
    into its study. ``predictor``: a Predictor, or a function that makes one (loaded only once the checks passed);
    ``on_progress(done, total)`` counts the slices segmented; ``segment``: a context held while the model runs (the
    app's model slot); ``say`` gets the lines a user should read."""
    import contextlib
    import tempfile

    if (prior or store) and pacs is None:
        raise FollowUpError(f"{'--prior' if prior else '--store'} works with a PACS: give --dicomweb URL")
    if len(sources) != (1 if prior else 2):
        raise FollowUpError("with --prior give the follow-up's study UID alone" if prior else "give BASELINE FOLLOWUP")
    interval = check_interval(interval)
    if out is not None:
        paths = [s for s in sources if not isinstance(s, Study)]
        out = check_out(out, [] if pacs is not None else paths).resolve()
    pred = predictor() if callable(predictor) and not hasattr(predictor, "predict_study") else predictor
    say(f"tumorseg: {pred.engine_line()}")
    with tempfile.TemporaryDirectory(prefix="tumorseg-followup-") as tmp:
        if pacs is not None:
            from ..pacs.usecases import open_study

            uids = list(sources)
            if prior:
                found = pacs.prior_study(uids[0])
                say(f"baseline: the prior study {found['study_uid']} of {found['date']}")
                uids.insert(0, found["study_uid"])
            studies = [open_study(pacs, uid, None, Path(tmp) / f"study{k}") for k, uid in enumerate(uids)]
        else:
            studies = [s if isinstance(s, Study) else read_study(s, spacing=spacing) for s in sources]
        with segment or contextlib.nullcontext():
            fu = compare(pred, studies[0], studies[1], interval_days=interval, force=force, on_progress=on_progress)
        reports = dicom_reports(fu) if (out is not None or store) else []
        if out is not None:
            write_outputs(fu, out, reports)
        if store:
            if not reports:
                raise FollowUpError("--store: the studies are not DICOM, so there is no report to send")
            for point, study_uid, datasets in reports:
                for line in pacs.store(datasets, study_uid):
                    say(f"stored into the {point} study {study_uid}: {line}")
    if out is not None:
        say(followup_line(fu.summary, out))
    return fu, out
