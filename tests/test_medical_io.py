"""DICOM and NIfTI through restoration: HU values, geometry, identifying tags, derived series; the MONAI transform."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from invdiff.cli.batch import restore_files
from invdiff.medical.ct import hu_to_unit, unit_to_hu
from invdiff.io import derived_series_uid, read_image, write_image
from invdiff.operators import Tomography
from invdiff.priors import GaussianPrior

pydicom = pytest.importorskip("pydicom", reason="needs pip install 'invdiff[medical]'")
nib = pytest.importorskip("nibabel", reason="needs pip install 'invdiff[medical]'")

SIZE = 8
PRIOR = GaussianPrior.smooth((1, SIZE, SIZE), length_scale=2.0, variance=0.01, mean=0.5)
FAST = dict(method="pigdm", steps=20, sigma_y=0.001, samples=1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def hu_slices(n: int, seed: int = 0) -> np.ndarray:
    """``n`` smooth slices in HU (the prior's images through the ``ct`` window), rounded to integers."""
    unit = PRIOR.sample(n, generator=gen(seed))[:, 0]
    return np.rint(unit_to_hu(unit).numpy())


def write_ct_slice(path, hu: np.ndarray, z: float, study: str, series: str, sop: str | None = None) -> None:
    """A CT Image Storage instance: 12-bit stored values, HU = stored - 1024, full patient geometry."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = sop or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.Modality = "Doe^John", "PID-7", "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelSpacing = [0.7, 0.8]
    ds.SliceThickness = 2.5
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-2.8, -3.2, z]
    ds.PixelData = (hu + 1024).astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def series(tmp_path, n: int = 2):
    from pydicom.uid import generate_uid

    folder = tmp_path / "series"
    folder.mkdir()
    study, src_series = generate_uid(), generate_uid()
    hu = hu_slices(n)
    for k in range(n):
        write_ct_slice(folder / f"IM{k:04d}.dcm", hu[k], z=2.5 * k, study=study, series=src_series)
    return folder, hu, study, src_series


# -- DICOM ----------------------------------------------------------------------------------


def test_dicom_hu_round_trip_through_the_prior_range(tmp_path):
    folder, hu, study, src_series = series(tmp_path, 1)
    img = read_image(folder / "IM0000.dcm")
    np.testing.assert_array_equal(img.data[0, 0].numpy(), hu[0])  # HU, exactly
    x = hu_to_unit(img.data)  # the prior's [0, 1]
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    out = tmp_path / "derived.dcm"
    write_image(out, unit_to_hu(x + 1e-4), like=img, description="passed through", series_uid=derived_series_uid(img))
    back = read_image(out)
    assert (back.data - img.data).abs().max() <= 0.5  # within half a stored unit (1 HU)
    ds, src = pydicom.dcmread(out), img.meta["dataset"]
    for tag in ("PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient", "PatientID", "StudyInstanceUID",
                "SliceThickness", "Modality"):  # fmt: skip
        assert ds[tag].value == src[tag].value, tag
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID and ds.SOPInstanceUID != src.SOPInstanceUID
    assert ds.SeriesInstanceUID == derived_series_uid(img)  # the same for every slice of the source series
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"] and ds.SeriesDescription == "passed through"


def test_dicom_series_restored_with_ct_task_is_one_derived_series(tmp_path):
    folder, hu, study, src_series = series(tmp_path, 2)
    out = tmp_path / "out"
    report = restore_files([folder], out, task="ct", task_options={"angles": 24}, prior=PRIOR, simulate=True, **FAST)
    assert report.ok and report.done == ["IM0000", "IM0001"]
    derived = [pydicom.dcmread(out / f"IM000{k}" / "restored.dcm") for k in range(2)]
    sources = [pydicom.dcmread(folder / f"IM000{k}.dcm") for k in range(2)]
    assert derived[0].SeriesInstanceUID == derived[1].SeriesInstanceUID != src_series
    assert derived[0].SOPInstanceUID != derived[1].SOPInstanceUID
    for d, s, want in zip(derived, sources, hu):
        assert d.StudyInstanceUID == study and d.PatientID == "PID-7"
        assert d.ImagePositionPatient == s.ImagePositionPatient and d.PixelSpacing == s.PixelSpacing
        assert d.ImageOrientationPatient == s.ImageOrientationPatient and "DERIVED" in d.ImageType
        got = read_image(out / d.filename.split("/")[-2] / "restored.dcm").data[0, 0].numpy()
        # restored from 24 nearly noiseless views: within a few HU of the source (measured 4 HU at most)
        assert np.abs(got - want).max() < 40, np.abs(got - want).max()
    rows = {r["name"]: r for r in report.rows}
    assert rows["IM0000"]["psnr"] > 40  # against the windowed source, in the prior's units (measured 63.6 dB)


# -- NIfTI ----------------------------------------------------------------------------------


def nifti_volume(tmp_path, name="vol.nii.gz"):
    vol = PRIOR.sample(3, generator=gen(3))[:, 0].numpy().astype(np.float32).transpose(1, 2, 0)  # (8, 8, 3)
    affine = np.array([[0.0, -0.8, 0.0, 10.0], [0.0, 0.0, 2.5, -4.0], [-0.7, 0.0, 0.0, 7.0], [0, 0, 0, 1]])
    img = nib.Nifti1Image(vol, affine)
    img.header.set_zooms((0.7, 0.8, 2.5))
    nib.save(img, tmp_path / name)
    return tmp_path / name, vol, affine


def test_nifti_write_keeps_affine_zooms_and_values(tmp_path):
    path, vol, affine = nifti_volume(tmp_path)
    img = read_image(path)
    assert img.data.shape == (3, 1, SIZE, SIZE)
    write_image(tmp_path / "copy.nii.gz", img.data, like=img)
    back = nib.load(tmp_path / "copy.nii.gz")
    np.testing.assert_array_equal(back.get_fdata(dtype=np.float32), vol)
    np.testing.assert_allclose(back.affine, affine)
    assert back.header.get_zooms() == pytest.approx((0.7, 0.8, 2.5))


def test_nifti_volume_restored_slice_by_slice_in_place(tmp_path):
    path, vol, affine = nifti_volume(tmp_path)
    out = tmp_path / "out"
    report = restore_files([path], out, task="ct", task_options={"angles": 24}, prior=PRIOR, simulate=True, **FAST)
    assert report.ok, report.failed
    restored = nib.load(out / "vol" / "restored.nii.gz")
    np.testing.assert_allclose(restored.affine, affine)
    assert restored.header.get_zooms() == pytest.approx((0.7, 0.8, 2.5)) and restored.shape == vol.shape
    got = restored.get_fdata()
    err = ((got - vol) ** 2).mean(axis=(0, 1))
    swapped = ((got - vol[..., [1, 2, 0]]) ** 2).mean(axis=(0, 1))
    assert (err < 1e-4).all() and (swapped > 100 * err).all(), (err, swapped)  # measured <= 6e-7 against >= 0.012
    assert nib.load(out / "vol" / "std.nii.gz").shape == vol.shape
    assert (out / "vol" / "restored.png").is_file()  # the middle slice as a preview
    assert report.rows[0]["psnr"] > 40  # measured 63.6 dB


def test_window_errors_are_one_line(tmp_path):
    path, _, _ = nifti_volume(tmp_path)
    report = restore_files([path], tmp_path / "o", task="ct", task_options={}, prior=PRIOR, window="lungs",
                           simulate=True, **FAST)  # fmt: skip
    assert "window 'lungs' is neither a name" in report.failed["vol"]


# -- MONAI ----------------------------------------------------------------------------------


def test_monai_transform_keeps_metadata_and_restores():
    pytest.importorskip("monai")
    from monai.data import MetaTensor
    from monai.transforms import Compose

    from invdiff.medical.monai import Restored

    clean = PRIOR.sample(3, generator=gen(5))[:, 0].float().permute(1, 2, 0)[None]  # (1, 8, 8, 3)
    hu = unit_to_hu(clean)
    affine = torch.tensor([[0.0, -0.8, 0, 10], [0, 0, 2.5, -4], [-0.7, 0, 0, 7], [0, 0, 0, 1]], dtype=torch.float64)
    image = MetaTensor(hu, affine=affine, meta={"filename_or_obj": "scan.nii.gz"})
    # simulate sparse-view CT of each axial slice and restore it, inside a MONAI pipeline
    pipeline = Compose([Restored("image", lambda shape: Tomography(24, shape[-1]), PRIOR, window="ct", simulate=True,
                                 std_postfix="std", **FAST)])  # fmt: skip
    data = pipeline({"image": image, "label": 3})
    out = data["image"]
    assert isinstance(out, MetaTensor) and out.shape == image.shape and data["label"] == 3
    torch.testing.assert_close(out.affine, affine)
    assert out.meta["filename_or_obj"] == "scan.nii.gz" and data["image_std"].shape == image.shape
    assert not torch.equal(out.as_tensor(), image.as_tensor())  # the image changed ...
    err = (out.as_tensor() - hu).pow(2).mean(dim=(0, 1, 2)).sqrt()
    swapped = (out.as_tensor() - hu[..., [1, 2, 0]]).pow(2).mean(dim=(0, 1, 2)).sqrt()
    assert (err < 20).all() and (swapped > 5 * err).all(), (err, swapped)  # ... slice by slice, in place (HU)


def test_monai_missing_names_the_extra(monkeypatch):
    from invdiff.medical import monai as transform

    monkeypatch.setitem(sys.modules, "monai.data", None)  # as if monai were not installed
    with pytest.raises(ValueError, match=r"pip install 'invdiff\[monai\]'"):
        transform.Restored("image", Tomography(4, 8), PRIOR)


def test_monai_transform_errors():
    pytest.importorskip("monai")
    from invdiff.medical.monai import Restored

    t = Restored("image", Tomography(4, SIZE), PRIOR, simulate=True, **FAST)
    with pytest.raises(ValueError, match="key 'image' is not in the data"):
        t({"label": 1})
    assert Restored("image", Tomography(4, SIZE), PRIOR, allow_missing_keys=True)({"a": 1}) == {"a": 1}
    with pytest.raises(ValueError, match="volumes must have one channel"):
        t({"image": torch.zeros(2, SIZE, SIZE, 3)})
    with pytest.raises(ValueError, match="axis is a spatial axis"):
        Restored("image", Tomography(4, SIZE), PRIOR, axis=3)


# -- the command line -------------------------------------------------------------------------


def test_cli_restores_volumes_dicom_and_low_dose_ct(tmp_path):
    """``invdiff restore`` with the shipped prior (2 steps): NIfTI volume, CT DICOM in HU, low-dose CT, limited angle."""
    from typer.testing import CliRunner

    from invdiff.cli import app

    def run(*args):
        return CliRunner().invoke(app, ["restore", *map(str, args), "--simulate", "--steps", "2", "--samples", "1", "--quiet"])

    vol = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    nib.save(nib.Nifti1Image(vol, affine), tmp_path / "vol.nii.gz")
    r = run(tmp_path / "vol.nii.gz", "--task", "ct", "--angles", "12", "--arc", "90", "--method", "pigdm",
            "-o", tmp_path / "out")  # fmt: skip
    assert r.exit_code == 0, r.output
    restored = nib.load(tmp_path / "out" / "vol" / "restored.nii.gz")
    assert restored.shape == (32, 32, 3) and np.allclose(restored.affine, affine)

    from pydicom.uid import generate_uid

    hu = np.rint(np.random.default_rng(1).uniform(-1000, 1000, (32, 32)))
    write_ct_slice(tmp_path / "ct.dcm", hu, z=0.0, study=generate_uid(), series=generate_uid())
    r = run(tmp_path / "ct.dcm", "--task", "ct", "--dose", "2000", "--method", "dps", "-o", tmp_path / "low")
    assert r.exit_code == 0, r.output
    out = read_image(tmp_path / "low" / "ct" / "restored.dcm")
    assert out.data.shape == (1, 1, 32, 32) and -1024 <= float(out.data.min()) and float(out.data.max()) <= 1000
    r = run(tmp_path / "ct.dcm", "--task", "ct", "--dose", "2000", "--method", "pigdm", "-o", tmp_path / "bad")
    assert r.exit_code != 0 and "method 'pigdm' needs a linear operator" in r.output
