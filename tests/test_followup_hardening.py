"""Issue 44, follow-up: outputs never replace an input, the registration gate is not fooled by a mirrored brain or
another patient's, a change is never made by the input's sequence set, two patients are never linked, and every
number a user gives is checked before any work."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from .conftest import SHARED

CASE = SHARED / "data" / "brats-dev" / "BraTS-GLI-00000-000"
OTHER = SHARED / "data" / "brats-dev" / "brats_2013_pat0001_1"


def _head(path: Path, seed: int = 0, shift: int = 0) -> Path:
    """A small NIfTI 'head': an asymmetric ellipsoid brain with ventricles and a bright blob, 2 mm voxels."""
    rng = np.random.default_rng(seed)
    x, y, z = np.mgrid[:48, :56, :20]
    brain = ((x - 24) / 19) ** 2 + ((y - 28) / 23) ** 2 + ((z - 10) / 11) ** 2 < 1
    vent = ((x - 20) / 4) ** 2 + ((y - 26) / 8) ** 2 + ((z - 10) / 4) ** 2 < 1
    blob = (x - 32 - shift) ** 2 + (y - 22) ** 2 + (z - 10) ** 2 < 30
    vol = brain * (100 + rng.normal(0, 4, brain.shape)) - vent * 60 + blob * 90
    nib.save(nib.Nifti1Image(vol.clip(0, 255).astype(np.uint8), np.diag([-2.0, -2.0, 2.0, 1.0])), str(path))
    return path


def test_out_in_the_inputs_folder_is_refused_and_the_inputs_stay_byte_identical(tmp_path, tiny_model, capsys):
    """44.1: before the fix `followup DIR/change.nii.gz DIR/later.nii.gz --out DIR` replaced the baseline with the
    change map (and a followup.json lying there); now refused in one line, before any work, nothing written."""
    from tumorseg.cli.main import main

    d = tmp_path / "DIR"
    d.mkdir()
    base, later = _head(d / "change.nii.gz"), _head(d / "later.nii.gz", seed=1, shift=2)
    (d / "followup.json").write_text('{"mine": true}')
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    args = ["--model", str(tiny_model), "--engine", "torch-fp32", "--interval", "30"]
    assert main(["followup", str(base), str(later), "--out", str(d), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and "input" in err[0]
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    assert main(["followup", str(base), str(later), "--out", str(d / "sub"), *args]) == 0  # a folder beside is fine
    assert {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()} == before


def test_every_writer_refuses_an_out_that_holds_an_input(tmp_path):
    from tumorseg.errors import FollowUpError
    from tumorseg.followup.reports import check_out

    f = _head(tmp_path / "a.nii.gz")
    with pytest.raises(FollowUpError, match="folder of the input"):
        check_out(tmp_path, [f])
    (tmp_path / "case").mkdir()
    with pytest.raises(FollowUpError, match="inside the input"):
        check_out(tmp_path / "case" / "out", [tmp_path / "case"])
    assert not check_out(tmp_path / "elsewhere", [f]).exists()  # checked, never made before there is output


@pytest.mark.parametrize("bad", ["nan", "inf", "-91", "0", "1e9", "soon"])
def test_interval_must_be_a_finite_positive_number_of_days(tmp_path, bad, capsys):
    """44.5: `--interval nan|inf` gave exit 0 and a followup.json that is not JSON; -91 turned a shrink into growth."""
    from tumorseg.cli.main import main

    a, b = _head(tmp_path / "a.nii.gz"), _head(tmp_path / "b.nii.gz", seed=1)
    assert main(["followup", str(a), str(b), "--out", str(tmp_path / "o"), f"--interval={bad}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interval" in err[0]
    assert not (tmp_path / "o").exists()


def test_the_rest_interval_rule_is_the_cli_rule():
    from tumorseg.errors import FollowUpError
    from tumorseg.followup.comparison import check_interval

    assert check_interval(None) is None and check_interval("30") == 30.0
    for bad in (float("nan"), float("inf"), -91, 0, 40000):
        with pytest.raises(FollowUpError):
            check_interval(bad)


def test_different_sequence_sets_are_measured_on_the_sequences_they_share():
    """44.3: a case read with three sequences against its FLAIR alone: both are fed FLAIR alone, with a note."""
    from tumorseg.followup.comparison import on_shared_sequences, sequences_present
    from tumorseg.studies import Study

    rng = np.random.default_rng(0)
    three = rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)
    flair = np.repeat(three[..., 1:2], 3, -1)
    a = Study("case/", "nifti", three, (1.0, 1.0, 1.0), ["x"] * 4)
    b = Study("case_flair.nii.gz", "nifti", flair, (1.0, 1.0, 1.0), ["x"] * 4, single_sequence=True)
    assert sequences_present(a) == {0, 1, 2} and sequences_present(b) == {1}
    (a2, b2), note = on_shared_sequences([a, b])
    assert np.array_equal(a2.volume, flair) and np.array_equal(b2.volume, flair) and a2.single_sequence
    assert "different sequences" in note and "FLAIR" in note
    assert np.array_equal(a.volume, three)  # the caller's study untouched
    same, none = on_shared_sequences([a, a])
    assert none is None and same[0] is a


def test_two_patients_are_never_linked_and_the_uid_is_not_a_function_of_the_patient_id():
    """44.4: forced P1 vs P2 gave P2's SR P1's tracking UID; the UID was generate_uid over fixed strings and the ID."""
    from types import SimpleNamespace

    from pydicom.uid import generate_uid

    from tumorseg.followup.reports import TRACKING_IDENTIFIER, tracking_uids

    def point(pid, study_uid):
        ds = SimpleNamespace(PatientID=pid, StudyInstanceUID=study_uid)
        return SimpleNamespace(study=SimpleNamespace(dicom=[ds], source="x"))

    one = tracking_uids(SimpleNamespace(baseline=point("P1", "1.2.3"), followup=point("P1", "1.2.4")))
    assert one["baseline"] == one["followup"]
    two = tracking_uids(SimpleNamespace(baseline=point("P1", "1.2.3"), followup=point("P2", "1.2.5")))
    assert two["baseline"] != two["followup"]
    assert one["baseline"] != generate_uid(entropy_srcs=["tumorseg", TRACKING_IDENTIFIER, "P1"])
    other_study = tracking_uids(SimpleNamespace(baseline=point("P1", "9.9.9"), followup=point("P1", "9.9.8")))
    assert other_study["baseline"] != one["baseline"]  # the PatientID alone does not decide it


def test_a_followup_result_given_to_an_image_endpoint_is_a_400_not_a_500(predictor):
    """44.8: a follow-up's id at /api/mask, /api/compare or /api/result/{id}/mask.png answered 500."""
    from types import SimpleNamespace

    from tumorseg.app.common import BadRequest
    from tumorseg.app.results import ResultStore

    store = ResultStore(predictor)
    rid = store.remember("followup", SimpleNamespace(change=np.zeros((2, 4, 4), np.uint8)), "a -> b")
    with pytest.raises(BadRequest) as e:
        store.get(rid, None)
    assert e.value.status == 400 and "followup result" in e.value.msg
    assert store.get(rid, None, kinds=("followup",))[0] == "followup"


@pytest.mark.slow
@pytest.mark.skipif(not (CASE.is_dir() and OTHER.is_dir()), reason="needs ../shared/data/brats-dev")
def test_a_mirrored_brain_and_another_patients_brain_are_not_trusted(tmp_path):
    """44.2: a left-right mirrored follow-up was trusted at brain overlap 0.902, another patient's at 0.871."""
    from tumorseg.followup.registration import register
    from tumorseg.studies import read_study

    f = CASE / f"{CASE.name}_flair.nii.gz"
    img = nib.load(str(f))
    mirrored = tmp_path / "mirrored.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj)[::-1].copy(), img.affine, img.header), str(mirrored))
    base = read_study(f)
    same = register(base, read_study(f))
    assert same.trusted and not same.mirror_suspected and same.correlation > 0.95
    m = register(base, read_study(mirrored))
    assert m.mirror_suspected and not m.trusted
    assert any("left-right" in w for w in m.why_not_trusted())
    other = register(base, read_study(OTHER / f"{OTHER.name}_flair.nii.gz"))
    assert not other.trusted and other.correlation < 0.75


def _dated(source: str, **tags):
    from types import SimpleNamespace

    return SimpleNamespace(source=source, dicom=[SimpleNamespace(**tags)])


def test_dates_that_are_no_dates_in_the_future_or_on_one_side_only_are_said():
    """44.6: 20241399 was dropped silently, 2099 gave growth over 75 years, one dated side asked for nothing, and
    --interval beside real dates was ignored without a word."""
    from tumorseg.followup.comparison import date_notes, study_date

    bad, future = _dated("a", StudyDate="20241399"), _dated("b", StudyDate="20990101")
    assert study_date(bad) is None
    notes = " ".join(date_notes([bad, future], [study_date(bad), study_date(future)], None))
    assert "20241399" in notes and "not a valid date" in notes
    assert "future" in notes and "give --interval" in notes
    a, b = _dated("a", StudyDate="20250101"), _dated("b", StudyDate="20250402")
    notes = " ".join(date_notes([a, b], [study_date(a), study_date(b)], 30.0))
    assert "--interval 30 was ignored" in notes and "91 days" in notes
    assert date_notes([a, b], [study_date(a), study_date(b)], None) == []


def test_prior_compares_dates_as_dates_refuses_ties_and_says_why_a_study_is_not_found():
    """44.6: in --prior an invalid StudyDate was compared as a string and chosen as the baseline; two priors on one
    date were chosen by UID order without a word; a CT follow-up was refused for "no StudyDate"."""
    from tumorseg.pacs.client import Pacs
    from tumorseg.pacs.config import PacsError

    def archive(rows):
        p = Pacs.__new__(Pacs)
        p.patient_of = lambda uid: "P1"
        p.studies = lambda patient_id=None: [{"patient_id": "P1", "study_uid": u, "date": d} for u, d in rows]
        return p

    p = archive([("1.9", "20250601"), ("1.1", "20241399"), ("1.2", "20250101")])
    assert p.prior_study("1.9")["study_uid"] == "1.2"  # 20241399 is no date: never the baseline
    with pytest.raises(PacsError, match="dated 2025-01-01.*give the baseline"):
        archive([("1.9", "20250601"), ("1.2", "20250101"), ("1.3", "20250101")]).prior_study("1.9")
    with pytest.raises(PacsError, match="not among this patient's MR studies"):
        archive([("1.2", "20250101")]).prior_study("1.7")
    with pytest.raises(PacsError, match="not a valid date"):
        archive([("1.9", "20251399"), ("1.2", "20250101")]).prior_study("1.9")


def _reachable_array_bytes(obj) -> int:
    """The bytes of every numpy array reachable from ``obj`` (a view counts as its base), skipping code, types and
    modules (what a held result keeps alive, measured by walking the objects rather than by the rule that counts)."""
    import gc
    import types

    seen, arrays, stack = set(), {}, [obj]
    skip = (str, bytes, int, float, type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, skip):
            continue
        seen.add(id(o))
        if isinstance(o, np.ndarray):
            while isinstance(o.base, np.ndarray):
                o = o.base
            arrays[id(o)] = o.nbytes
            continue
        stack.extend(gc.get_referents(o))
    return sum(arrays.values())


@pytest.mark.slow
def test_a_held_followup_is_counted_with_every_array_it_keeps_and_evicted_by_bytes(tmp_path, predictor):
    """Item 15: what a held follow-up keeps alive (both time points' slices, probabilities, masks, volumes, the
    change map) is what the results store counts against its byte budget, so holding follow-ups cannot grow the
    app past the budget; the oldest goes first."""
    from tumorseg.app.results import ResultStore, _held_bytes
    from tumorseg.followup.comparison import compare

    from .test_followup import _dicom_study

    early = _dicom_study(tmp_path / "early", "P1", "20250101", 0)
    late = _dicom_study(tmp_path / "late", "P1", "20250402", 1)
    fu = compare(predictor, early, late)
    counted, reachable = _held_bytes(fu), _reachable_array_bytes(fu)
    assert reachable > 0 and counted >= reachable, (counted, reachable)
    store = ResultStore(predictor, max_results=10, max_bytes=int(2.5 * counted))
    ids = [store.remember("followup", compare(predictor, early, late), f"fu{k}") for k in range(4)]
    assert len(store) == 2 and store.held_bytes() <= 2.5 * counted
    store.get(ids[-1], None, kinds=("followup",))
    with pytest.raises(Exception, match="not held"):
        store.get(ids[0], None, kinds=("followup",))
