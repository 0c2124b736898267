"""The DICOMweb client: QIDO-RS to search, WADO-RS to retrieve (instance by instance, into a temporary folder, under
the same size limits as an upload, each instance checked to be the study, series and patient asked for), STOW-RS to
store the DICOM-SEG and the TID 1500 report into the source study. A retrieved series is read by the same reader as
the same files on disk, so it gives the same voxels."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..imaging.limits import MAX_DECODED_BYTES
from ..studies import MODEL_CHANNELS, sequence_of_series
from ..studies.dicom import parse_dicom_date
from .config import InvalidUID, PacsConfig, PacsError, check_uid
from .transport import MAX_SEARCH_BYTES, session

MAX_SERIES_LISTED = 500


# one instance's answer, counted as it streams (an endless part or a multipart answer without a boundary is cut
# here, never buffered whole): 64 MB holds a 128-frame 512x512 16-bit enhanced MR; TUMORSEG_PACS_MAX_INSTANCE_MB
MAX_INSTANCE_BYTES = int(float(os.environ.get("TUMORSEG_PACS_MAX_INSTANCE_MB", "64")) * (1 << 20))


@dataclass
class SeriesChoice:
    """The series picked for a study, and why (goes into study.json)."""

    study_uid: str
    series: dict[str, dict]  # sequence -> the series' QIDO attributes (uid, description, ...)
    reasons: list[str] = field(default_factory=list)


def _value(ds_json: dict, tag: str, default=None):
    v = ds_json.get(tag, {}).get("Value")
    if not v:
        return default
    x = v[0]
    if isinstance(x, dict) and "Alphabetic" in x:
        return x["Alphabetic"]
    return x


class Pacs:
    """One DICOMweb server. Every method raises ``PacsError`` with one line, never a traceback."""

    def __init__(self, cfg: PacsConfig):
        from dicomweb_client.api import DICOMwebClient

        self.cfg = cfg
        s = session(cfg)
        if cfg.token:
            s.headers["Authorization"] = f"Bearer {cfg.token}"
        elif cfg.user is not None:
            s.auth = (cfg.user, cfg.password or "")
        s.verify = cfg.ca_bundle or True
        self.session = s  # our bounded session (the client holds the same object)
        self.client = DICOMwebClient(cfg.url, session=s, timeout=cfg.timeout)
        # one attempt per request: dicomweb-client's retries (any exception, up to 5 times with back-off) would
        # multiply every deadline and limit above; the user retries a failed open
        self.client.set_http_retry_params(retry=False)

    def _call(self, what: str, fn, *a, max_bytes: int = MAX_SEARCH_BYTES, **kw):
        import requests

        self.session.limit = max_bytes
        try:
            return fn(*a, **kw)
        except PacsError:
            raise
        except requests.exceptions.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else "?"
            why = {401: "the login was refused", 403: "access is forbidden", 404: "not found"}.get(code, "an error")
            raise PacsError(f"{self.cfg.url}: {what}: HTTP {code} ({why})") from None
        except requests.exceptions.SSLError as exc:
            raise PacsError(f"{self.cfg.url}: {what}: the certificate could not be verified ({exc})") from None
        except requests.exceptions.RequestException as exc:
            raise PacsError(f"{self.cfg.url}: {what}: the server cannot be reached ({type(exc).__name__})") from None
        except Exception as exc:  # whatever a parser makes of random bytes: one line, never a traceback
            raise PacsError(
                f"{self.cfg.url}: {what}: the answer is not valid DICOMweb ({type(exc).__name__})"
            ) from None

    # ------------------------------------------------------------------ QIDO
    def studies(
        self,
        patient_id: str | None = None,
        name: str | None = None,
        date: str | None = None,
        modality: str | None = "MR",
    ) -> list[dict]:
        """Studies a user could open: uid, patient, date, description, modalities, series count."""
        filters = {k: v for k, v in {"PatientID": patient_id, "PatientName": name, "StudyDate": date}.items() if v}
        if modality:
            filters["ModalitiesInStudy"] = modality
        found = self._call(
            "searching studies",
            self.client.search_for_studies,
            search_filters=filters,
            fuzzymatching=bool(name),
            fields=["StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries"],
            limit=MAX_SERIES_LISTED,
        )
        out = []
        for d in found:
            mods = d.get("00080061", {}).get("Value") or []
            out.append(
                {
                    "study_uid": _value(d, "0020000D"),
                    "patient_id": _value(d, "00100020", ""),
                    "patient_name": str(_value(d, "00100010", "")),
                    "date": _value(d, "00080020", ""),
                    "description": _value(d, "00081030", ""),
                    "modalities": list(mods),
                    "series": _value(d, "00201206"),
                }
            )
        if modality:  # servers that ignore the filter
            out = [s for s in out if not s["modalities"] or modality in s["modalities"]]
        return out

    def series(self, study_uid: str) -> list[dict]:
        found = self._call(
            "searching the study's series",
            self.client.search_for_series,
            search_filters={"StudyInstanceUID": study_uid},
            fields=["SeriesDescription", "ProtocolName", "Modality", "NumberOfSeriesRelatedInstances"],
        )
        return [
            {
                "series_uid": _value(d, "0020000E"),
                "modality": _value(d, "00080060", ""),
                "description": _value(d, "0008103E", ""),
                "protocol": _value(d, "00181030", ""),
                "instances": _value(d, "00201209"),
                "number": _value(d, "00200011"),
            }
            for d in found
        ]

    def choose(self, study_uid: str, series_uid: str | None = None) -> SeriesChoice:
        """The sequences to segment, picked like a folder of per-sequence files: FLAIR (needed), T1, T1c."""
        all_series = self.series(study_uid)
        if not all_series:
            raise PacsError(f"{self.cfg.url}: study {study_uid} not found, or it holds no series")
        mr = [s for s in all_series if s["modality"] == "MR"]
        if series_uid:
            pick = [s for s in all_series if s["series_uid"] == series_uid]
            if not pick:
                raise PacsError(f"study {study_uid} has no series {series_uid}")
            if pick[0]["modality"] != "MR":
                raise PacsError(f"series {series_uid} is {pick[0]['modality']}, not MR")
            return SeriesChoice(study_uid, {"flair": pick[0]}, [f"series {series_uid} chosen with --series"])
        if not mr:
            mods = sorted({s["modality"] for s in all_series})
            raise PacsError(f"study {study_uid} holds no MR series (only {', '.join(mods) or 'none'})")
        chosen: dict[str, dict] = {}
        reasons: list[str] = []
        for s in sorted(mr, key=lambda s: (-(s["instances"] or 0), str(s["number"]))):
            seq, why = sequence_of_series(s["description"], s["protocol"])
            if seq in MODEL_CHANNELS and seq not in chosen:
                chosen[seq] = s
                reasons.append(f"{seq.upper()} <- series {s['number']} {s['description']!r} ({why})")
        if "flair" not in chosen:
            listing = "; ".join(f"{s['description']!r}" for s in mr)
            raise PacsError(
                f"study {study_uid}: no FLAIR series recognised among its MR series ({listing}); "
                "the model segments the FLAIR abnormality: choose one with --series"
            )
        return SeriesChoice(study_uid, chosen, reasons)

    # ------------------------------------------------------------------ WADO
    def retrieve(
        self,
        study_uid: str,
        series_uid: str,
        folder: Path,
        max_bytes: int = MAX_DECODED_BYTES,
        patient: list | None = None,
    ) -> Path:
        """The series' instances as files in ``folder``, one request each (QIDO for their UIDs, then WADO-RS),
        each answer bounded as it streams and the series refused beyond ``max_bytes`` (as an upload is). Every
        instance must be the one asked for, of this study and series, and of one patient (``patient``: a
        one-item list shared across the series of a study, holding the first PatientID seen); anything else is
        refused before it is stored or shown."""
        check_uid(study_uid, "study UID")
        check_uid(series_uid, "series UID")
        folder.mkdir(parents=True, exist_ok=True)
        found = self._call(
            "listing the series' instances",
            self.client.search_for_instances,
            study_uid,
            series_uid,
            fields=["SOPInstanceUID", "InstanceNumber"],
        )
        uids = [_value(d, "00080018") for d in found]
        if not uids:
            raise PacsError(f"series {series_uid} returned no instances")
        patient = [] if patient is None else patient
        total = 0
        for k, sop in enumerate(uids):
            try:
                check_uid(sop, "SOP instance UID")
            except InvalidUID as exc:
                raise PacsError(f"series {series_uid}: the archive listed an instance whose {exc}") from None
            limit = min(MAX_INSTANCE_BYTES, max_bytes - total)
            if limit <= 0:
                raise PacsError(f"series {series_uid} is larger than {max_bytes >> 20} MB; refused like an upload")
            ds = self._call(
                "retrieving an instance", self.client.retrieve_instance, study_uid, series_uid, sop, max_bytes=limit
            )
            _check_instance(ds, study_uid, series_uid, sop, patient, k + 1)
            f = folder / f"{k:05d}.dcm"
            try:
                ds.save_as(f, enforce_file_format=True)
            except Exception as exc:
                raise PacsError(
                    f"series {series_uid}: instance {k + 1} is not valid DICOM ({type(exc).__name__})"
                ) from None
            total += f.stat().st_size
            del ds
        return folder

    def fetch_study(self, choice: SeriesChoice, folder: Path) -> dict[str, Path]:
        """Each chosen sequence's series in a subfolder of ``folder``, all of one patient: the study's own
        (QIDO) where the archive reports it."""
        patient = [p] if (p := self.patient_of(choice.study_uid)) else []
        return {
            seq: self.retrieve(choice.study_uid, s["series_uid"], folder / seq, patient=patient)
            for seq, s in choice.series.items()
        }

    def patient_of(self, study_uid: str) -> str | None:
        """The study's PatientID as the archive's study search reports it (None where it reports none)."""
        found = self._call(
            "looking up the study",
            self.client.search_for_studies,
            search_filters={"StudyInstanceUID": check_uid(study_uid, "study UID")},
            fields=["PatientID"],
        )
        ids = {str(_value(d, "00100020", "")) for d in found if _value(d, "0020000D") == study_uid}
        ids.discard("")
        if len(ids) > 1:
            raise PacsError(f"study {study_uid}: the archive reports it for several patients; refused")
        return ids.pop() if ids else None

    def prior_study(self, study_uid: str) -> dict:
        """The patient's latest MR study dated before ``study_uid`` (a QIDO search by the study's own
        PatientID): the baseline ``followup --prior`` compares with. PacsError where there is none."""
        pid = self.patient_of(study_uid)
        if not pid:
            raise PacsError(f"study {study_uid}: the archive reports no PatientID; give the baseline's study UID")
        found = [s for s in self.studies(patient_id=pid) if s["patient_id"] == pid]  # exact, never a wildcard
        this = [s for s in found if s["study_uid"] == study_uid]
        if not this:
            raise PacsError(
                f"study {study_uid} is not among this patient's MR studies (another modality?); give both UIDs"
            )
        raw = this[0]["date"]
        day = parse_dicom_date(raw)
        if day is None:
            why = f"its StudyDate {raw!r} is not a valid date" if raw else "it carries no StudyDate"
            raise PacsError(f"study {study_uid}: {why}, so no earlier study can be chosen; give both UIDs")
        dated = [(parse_dicom_date(s["date"]), s) for s in found if s["study_uid"] != study_uid]
        earlier = [(d, s) for d, s in dated if d is not None and d < day]  # dates compared as dates, never strings
        if not earlier:
            raise PacsError(f"the archive holds no MR study of this patient dated before {raw} (study {study_uid})")
        latest = max(d for d, _ in earlier)
        same = [s for d, s in earlier if d == latest]
        if len(same) > 1:
            uids = ", ".join(s["study_uid"] for s in same)
            raise PacsError(
                f"{len(same)} MR studies of this patient are dated {latest.isoformat()} ({uids}); give the baseline's UID"
            )
        return same[0]

    # ------------------------------------------------------------------ STOW
    def store(self, datasets: list, study_uid: str) -> list[str]:
        """Store ``datasets`` into the study; returns what arrived. Raises ``PacsError`` naming what did
        and did not arrive when the server refuses any of them."""
        arrived: list[str] = []
        for ds in datasets:
            kind = "DICOM-SEG" if ds.Modality == "SEG" else "SR report"
            try:
                self._call(f"storing the {kind}", self.client.store_instances, [ds], check_uid(study_uid, "study UID"))
            except PacsError as exc:
                got = ", ".join(arrived) or "nothing"
                raise PacsError(f"{exc}; stored before the failure: {got}") from None
            arrived.append(f"{kind} {ds.SOPInstanceUID}")
        return arrived


def _check_instance(ds, study_uid: str, series_uid: str, sop: str, patient: list, k: int) -> None:
    """An instance from the archive is the one asked for, in the study and series asked for, of the study's
    patient; else PacsError naming what differs (and never the other patient's name)."""
    got = {
        "study": str(getattr(ds, "StudyInstanceUID", "")),
        "series": str(getattr(ds, "SeriesInstanceUID", "")),
        "instance": str(getattr(ds, "SOPInstanceUID", "")),
    }
    asked = {"study": study_uid, "series": series_uid, "instance": sop}
    for key in asked:
        if got[key] != asked[key]:
            raise PacsError(
                f"series {series_uid}: instance {k} belongs to {key} {got[key] or '(none)'}, not the requested "
                f"{asked[key]}: the archive answered with other images; refused, nothing stored or shown"
            )
    pid = str(getattr(ds, "PatientID", "") or "")
    if not patient:
        patient.append(pid)
    elif pid != patient[0]:
        raise PacsError(
            f"series {series_uid}: instance {k} is of another patient than the study (PatientID differs): "
            "refused, nothing stored or shown"
        )
