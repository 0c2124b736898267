"""A DICOMweb archive (PACS) as one more study source, and the place results go back to.

QIDO-RS to search, WADO-RS to retrieve (instance by instance, into a temporary folder, under the same
size limits as an upload), STOW-RS to store the DICOM-SEG and the TID 1500 report into the source
study. The protocol is dicomweb-client's; what is written is highdicom's (``studies``). A retrieved
series is read by the same reader as the same files on disk, so it gives the same voxels.

Credentials never come from the command line alone: TUMORSEG_PACS_TOKEN (bearer),
TUMORSEG_PACS_USER + TUMORSEG_PACS_PASSWORD (basic), or a file (``auth_file``: a line
"user:password" or "Bearer TOKEN"). HTTPS certificates are verified unless a CA bundle is given.
"""

from __future__ import annotations

import io as _io
import os
from dataclasses import dataclass, field
from pathlib import Path

from .io import MAX_DECODED_BYTES
from .studies import MODEL_CHANNELS, sequence_of_series

TIMEOUT_S = 30.0
MAX_SERIES_LISTED = 500


class PacsError(ValueError):
    """The archive is unreachable, refuses us, answers garbage, or holds nothing usable: one line."""


@dataclass(frozen=True)
class PacsConfig:
    url: str
    user: str | None = None
    password: str | None = None
    token: str | None = None
    ca_bundle: str | None = None  # a CA file for a private certificate; verification is never off
    timeout: float = TIMEOUT_S

    @classmethod
    def from_env(cls, url: str, auth_file: str | None = None, ca_bundle: str | None = None) -> PacsConfig:
        """Credentials from a file or the environment (never from the command line)."""
        user, password, token = None, None, os.environ.get("TUMORSEG_PACS_TOKEN") or None
        if os.environ.get("TUMORSEG_PACS_USER"):
            user, password = os.environ["TUMORSEG_PACS_USER"], os.environ.get("TUMORSEG_PACS_PASSWORD", "")
        if auth_file:
            try:
                line = Path(auth_file).read_text().splitlines()[0].strip()
            except (OSError, IndexError) as exc:
                raise PacsError(f"{auth_file}: cannot read credentials from it ({exc or 'empty file'})") from None
            if line.lower().startswith("bearer "):
                token, user, password = line[7:].strip(), None, None
            elif ":" in line:
                user, password = line.split(":", 1)
                token = None
            else:
                raise PacsError(f"{auth_file}: expected 'user:password' or 'Bearer TOKEN' on its first line")
        if not url.lower().startswith(("http://", "https://")):
            raise PacsError(f"{url}: a DICOMweb URL starts with http:// or https://")
        return cls(url.rstrip("/"), user, password, token, ca_bundle)


@dataclass
class Choice:
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
        import requests
        from dicomweb_client.api import DICOMwebClient

        self.cfg = cfg
        s = requests.Session()
        if cfg.token:
            s.headers["Authorization"] = f"Bearer {cfg.token}"
        elif cfg.user is not None:
            s.auth = (cfg.user, cfg.password or "")
        s.verify = cfg.ca_bundle or True
        self.client = DICOMwebClient(cfg.url, session=s, timeout=cfg.timeout)

    def _call(self, what: str, fn, *a, **kw):
        import requests

        try:
            return fn(*a, **kw)
        except requests.exceptions.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else "?"
            why = {401: "the login was refused", 403: "access is forbidden", 404: "not found"}.get(code, "an error")
            raise PacsError(f"{self.cfg.url}: {what}: HTTP {code} ({why})") from None
        except requests.exceptions.SSLError as exc:
            raise PacsError(f"{self.cfg.url}: {what}: the certificate could not be verified ({exc})") from None
        except requests.exceptions.RequestException as exc:
            raise PacsError(f"{self.cfg.url}: {what}: the server cannot be reached ({type(exc).__name__})") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
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

    def choose(self, study_uid: str, series_uid: str | None = None) -> Choice:
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
            return Choice(study_uid, {"flair": pick[0]}, [f"series {series_uid} chosen with --series"])
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
        return Choice(study_uid, chosen, reasons)

    # ------------------------------------------------------------------ WADO
    def retrieve(self, study_uid: str, series_uid: str, folder: Path, max_bytes: int = MAX_DECODED_BYTES) -> Path:
        """The series' instances as files in ``folder``, refused beyond ``max_bytes`` (as an upload is)."""
        folder.mkdir(parents=True, exist_ok=True)
        total = 0
        it = self._call("retrieving the series", self.client.iter_series, study_uid, series_uid)
        k = 0
        while True:
            ds = self._call("retrieving the series", next, it, None)
            if ds is None:
                break
            buf = _io.BytesIO()
            try:
                ds.save_as(buf, enforce_file_format=True)
            except Exception as exc:
                raise PacsError(
                    f"series {series_uid}: instance {k + 1} is not valid DICOM ({type(exc).__name__})"
                ) from None
            total += buf.tell()
            if total > max_bytes:
                raise PacsError(f"series {series_uid} is larger than {max_bytes >> 20} MB; refused like an upload")
            (folder / f"{k:05d}.dcm").write_bytes(buf.getvalue())
            k += 1
        if k == 0:
            raise PacsError(f"series {series_uid} returned no instances")
        return folder

    def fetch_study(self, choice: Choice, folder: Path) -> dict[str, Path]:
        """Each chosen sequence's series in a subfolder of ``folder``."""
        return {seq: self.retrieve(choice.study_uid, s["series_uid"], folder / seq) for seq, s in choice.series.items()}

    # ------------------------------------------------------------------ STOW
    def store(self, datasets: list, study_uid: str) -> list[str]:
        """Store ``datasets`` into the study; returns what arrived. Raises ``PacsError`` naming what did
        and did not arrive when the server refuses any of them."""
        arrived: list[str] = []
        for ds in datasets:
            kind = "DICOM-SEG" if ds.Modality == "SEG" else "SR report"
            try:
                self._call(f"storing the {kind}", self.client.store_instances, [ds], study_uid)
            except PacsError as exc:
                got = ", ".join(arrived) or "nothing"
                raise PacsError(f"{exc}; stored before the failure: {got}") from None
            arrived.append(f"{kind} {ds.SOPInstanceUID}")
        return arrived


def open_study(pacs: Pacs, study_uid: str, series_uid: str | None, folder: Path):
    """Retrieve a study's chosen series into ``folder`` and read them as the same files on disk are
    (``studies.read_study``): one series, or FLAIR/T1/T1c when they lie on one grid. Where they do not,
    FLAIR alone is used and the note says why. The choice goes into the study's notes (study.json)."""
    from .studies import StudyError, read_study

    choice = pacs.choose(study_uid, series_uid)
    paths = pacs.fetch_study(choice, folder)
    notes = [f"From {pacs.cfg.url}, study {study_uid}: " + "; ".join(choice.reasons) + "."]
    if len(paths) > 1:
        try:
            study = read_study(paths)
        except StudyError as exc:
            study = read_study(paths["flair"])
            notes.append(f"FLAIR alone was segmented: {exc.reason}")
    else:
        study = read_study(paths["flair"])
    study.notes[:0] = notes
    study.source = f"{pacs.cfg.url} study {study_uid}"
    study.pacs = {
        "url": pacs.cfg.url,
        "study_uid": study_uid,
        "series": {seq: s["series_uid"] for seq, s in choice.series.items()},
        "chosen": choice.reasons,
    }
    return study
