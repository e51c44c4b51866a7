"""Image and scan I/O: exact round trips per format, DICOM/NIfTI metadata, inputs, padding, errors."""

from __future__ import annotations

import sys
import zlib

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image as PILImage

from invdiff.io import Image, find_inputs, pad_to_multiple, read_image, write_image

try:  # the `medical` extra
    import nibabel as nib
    import pydicom
except ImportError:
    nib = pydicom = None
needs_medical = pytest.mark.skipif(pydicom is None or nib is None, reason="needs pip install 'invdiff[medical]'")


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _ints(dtype, shape, seed=0) -> np.ndarray:
    """Random integers covering the dtype's full range, including 0 and the maximum."""
    top = np.iinfo(dtype).max
    a = _rng(seed).integers(0, top, size=shape, endpoint=True).astype(dtype)
    a.flat[0], a.flat[-1] = 0, top
    return a


# ----------------------------------------------------------------------------- PNG / TIFF / JPEG


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("shape", [(6, 5), (6, 5, 3)])
def test_raster_round_trip_exact(tmp_path, suffix, dtype, shape):
    stored = _ints(dtype, shape)
    path = tmp_path / f"a{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, stored, photometric="rgb" if len(shape) == 3 else "minisblack")
    elif dtype == np.uint8 or len(shape) == 2:
        PILImage.fromarray(stored).save(path)
    else:
        write_image(path, torch.from_numpy(stored.astype(np.float64) / 65535).permute(2, 0, 1), bit_depth=16)

    img = read_image(path)
    channels = 1 if len(shape) == 2 else 3
    assert img.data.shape == (1, channels, 6, 5) and img.data.dtype == torch.float32
    assert img.kind == ("png" if suffix == ".png" else "tiff")
    assert img.meta["bit_depth"] == 8 * np.dtype(dtype).itemsize
    expected = stored.astype(np.float64) / np.iinfo(dtype).max
    expected = expected[None, None] if len(shape) == 2 else expected.transpose(2, 0, 1)[None]
    np.testing.assert_allclose(img.data.numpy(), expected, atol=1e-7)

    # Written back at the source's bit depth, the stored integers come back exactly.
    out = write_image(tmp_path / f"b{suffix}", img.data, like=img)
    back = tifffile.imread(out) if suffix == ".tif" else _decode_png(out)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, stored)


def _decode_png(path) -> np.ndarray:
    """Independent reference: Pillow, except 16-bit RGB (which Pillow truncates): the PNG's own bytes."""
    depth, colour = path.read_bytes()[24:26]
    if depth == 16 and colour == 2:
        raw = path.read_bytes()
        start = raw.index(b"IDAT") + 4
        length = int.from_bytes(raw[start - 8 : start - 4], "big")
        width, height = int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")
        rows = np.frombuffer(zlib.decompress(raw[start : start + length]), np.uint8).reshape(height, -1)
        assert (rows[:, 0] == 0).all()  # filter type 0 is all this reference handles
        return rows[:, 1:].copy().view(">u2").reshape(height, width, 3).astype(np.uint16)
    with PILImage.open(path) as im:
        return np.asarray(im).astype(np.uint16 if depth == 16 else np.uint8)


def test_png16_rgb_reads_every_filter_type(tmp_path):
    """A 16-bit RGB PNG whose rows use filters None/Sub/Up/Average/Paeth decodes to the right integers."""
    stored = _ints(np.uint16, (5, 4, 3), seed=3)
    raw = stored.astype(">u2").reshape(5, -1).view(np.uint8).astype(np.int64)
    bpp, prev, lines = 6, np.zeros(raw.shape[1], np.int64), []
    for i, kind in enumerate([0, 1, 2, 3, 4]):
        cur = raw[i]
        left = np.concatenate([np.zeros(bpp, np.int64), cur[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int64), prev[:-bpp]])
        p = left + prev - upleft
        pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        pred = [0 * cur, left, prev, (left + prev) // 2, paeth][kind]
        lines.append(bytes([kind]) + ((cur - pred) % 256).astype(np.uint8).tobytes())
        prev = cur

    def chunk(t, b):
        return len(b).to_bytes(4, "big") + t + b + zlib.crc32(t + b).to_bytes(4, "big")

    ihdr = (4).to_bytes(4, "big") + (5).to_bytes(4, "big") + bytes([16, 2, 0, 0, 0])
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"".join(lines)))
    path = tmp_path / "filters.png"
    path.write_bytes(png + chunk(b"IEND", b""))
    img = read_image(path)
    np.testing.assert_array_equal(np.rint(img.data[0].permute(1, 2, 0).numpy() * 65535), stored)


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.array([[[255, 0, 0, 255], [0, 0, 0, 0]], [[0, 0, 255, 51], [10, 20, 30, 255]]], np.uint8)
    path = tmp_path / "a.png"
    PILImage.fromarray(rgba, "RGBA").save(path)
    img = read_image(path)
    assert img.data.shape == (1, 3, 2, 2) and img.meta["alpha"]
    # blue at alpha 0.2 over white: (0.8, 0.8, 1.0); transparent black: white
    np.testing.assert_allclose(img.data[0, :, 1, 0].numpy(), [0.8, 0.8, 1.0], atol=1e-6)
    np.testing.assert_allclose(img.data[0, :, 0, 1].numpy(), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(img.data[0, :, 1, 1].numpy(), np.array([10, 20, 30]) / 255, atol=1e-7)


def test_float_tiff_kept_as_given_and_written_unclipped(tmp_path):
    x = (_rng().standard_normal((4, 6)) * 100).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", x)
    img = read_image(tmp_path / "f.tif")
    np.testing.assert_array_equal(img.data[0, 0].numpy(), x)
    write_image(tmp_path / "g.tif", img.data, like=img)  # float source -> float32 TIFF
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "g.tif"), x)


def test_planar_tiff_and_16_bit_option(tmp_path):
    stored = _ints(np.uint16, (3, 4, 5), seed=4)
    tifffile.imwrite(tmp_path / "p.tif", stored, photometric="rgb", planarconfig="separate")
    img = read_image(tmp_path / "p.tif")
    assert img.meta["layout"] == "CHW"
    np.testing.assert_array_equal(np.rint(img.data[0].numpy() * 65535), stored)
    write_image(tmp_path / "q.png", img.data, bit_depth=16)  # no like: 16-bit on request
    assert (tmp_path / "q.png").read_bytes()[24] == 16
    np.testing.assert_array_equal(_decode_png(tmp_path / "q.png"), stored.transpose(1, 2, 0))
    write_image(tmp_path / "r.png", img.data)  # default: 8-bit
    np.testing.assert_array_equal(_decode_png(tmp_path / "r.png"), np.rint(stored.transpose(1, 2, 0) / 257))


def test_write_clips_and_rounds(tmp_path):
    """Documented rule: clip to [0, 1], then round x * 255 to the nearest integer."""
    x = torch.tensor([[[[-0.5, 0.0, 0.4 / 255, 0.6 / 255, 0.2, 1.0, 3.0]]]])
    write_image(tmp_path / "c.png", x)
    np.testing.assert_array_equal(np.asarray(PILImage.open(tmp_path / "c.png")), [[0, 0, 0, 1, 51, 255, 255]])


def test_jpeg_round_trip_close(tmp_path):
    yy, xx = np.mgrid[0:16, 0:16] / 15.0
    x = torch.from_numpy(np.stack([yy, xx, 0.5 * (yy + xx)])[None]).float()
    write_image(tmp_path / "a.jpg", x, quality=100)
    img = read_image(tmp_path / "a.jpg")
    assert img.kind == "jpeg" and img.data.shape == (1, 3, 16, 16)
    assert (img.data - x).abs().max() < 0.02


def test_write_is_atomic_and_overwrites(tmp_path):
    path = tmp_path / "sub" / "a.png"
    write_image(path, torch.zeros(1, 1, 3, 3))
    write_image(path, torch.ones(1, 1, 3, 3))
    assert read_image(path).data.min() == 1.0
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.png"]  # no temp files left behind


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask(tmp_path, umask):
    import os
    import stat

    old = os.umask(umask)
    try:
        for name in ("a.png", "b.npy", "c.tif"):
            write_image(tmp_path / name, torch.zeros(1, 1, 3, 3))
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
    finally:
        os.umask(old)


# ----------------------------------------------------------------------------- NPY / NPZ


@pytest.mark.parametrize(
    "shape,layout,chw",
    [
        ((5, 7), "HW", (1, 5, 7)),
        ((3, 5, 7), "CHW", (3, 5, 7)),
        ((5, 7, 3), "HWC", (3, 5, 7)),
        ((2, 1, 5, 7), "BCHW", None),
    ],
)
def test_npy_round_trip_keeps_range_and_layout(tmp_path, shape, layout, chw):
    a = (_rng().standard_normal(shape) * 50 - 20).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    img = read_image(tmp_path / "a.npy")
    assert img.meta["layout"] == layout
    expected = a if chw is None else (a.transpose(2, 0, 1) if layout == "HWC" else a.reshape(chw))
    np.testing.assert_array_equal(img.data.numpy().reshape(expected.shape), expected)
    write_image(tmp_path / "b.npy", img.data, like=img)
    back = np.load(tmp_path / "b.npy")
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, a)


def test_npz_key_choice(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4) - 5
    np.savez(tmp_path / "one.npz", whatever=a)
    np.savez(tmp_path / "named.npz", mask=np.ones((3, 4)), x=a)
    for name in ("one.npz", "named.npz"):
        np.testing.assert_array_equal(read_image(tmp_path / name).data[0, 0].numpy(), a)
    img = read_image(tmp_path / "named.npz")
    write_image(tmp_path / "out.npz", img.data * 2, like=img)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npz")["x"], 2 * a)


# ----------------------------------------------------------------------------- DICOM


def _ct_dataset(path, stored: np.ndarray, slope=1.0, intercept=-1024.0):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Doe^Jane", "ID-0042", "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelSpacing = [0.5, 0.5]
    ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


@needs_medical
def test_dicom_reads_hu_and_writes_derived_series(tmp_path):
    stored = _rng().integers(0, 4095, size=(6, 5), endpoint=True).astype(np.uint16)
    _ct_dataset(tmp_path / "ct.dcm", stored)
    img = read_image(tmp_path / "ct.dcm")
    assert img.kind == "dicom" and img.data.shape == (1, 1, 6, 5)
    np.testing.assert_array_equal(img.data[0, 0].numpy(), stored.astype(np.float32) - 1024)  # HU
    assert img.meta["value_range"] == (-1024.0, 3071.0)

    # Restored values slightly off integers, plus one beyond the stored range: round, clip.
    x = img.data + 0.3
    x[0, 0, 0, 0] = 5000.0
    write_image(tmp_path / "out" / "restored.dcm", x, like=img, description="restored")
    out = pydicom.dcmread(tmp_path / "out" / "restored.dcm")
    src = img.meta["dataset"]
    assert out.SOPInstanceUID != src.SOPInstanceUID and out.SeriesInstanceUID != src.SeriesInstanceUID
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.StudyInstanceUID == src.StudyInstanceUID
    assert str(out.PatientName) == "Doe^Jane" and out.PatientID == "ID-0042"
    assert list(out.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"] and out.SeriesDescription == "restored"
    expected = stored.astype(np.int64)
    expected[0, 0] = 4095
    np.testing.assert_array_equal(out.pixel_array, expected)
    back = read_image(tmp_path / "out" / "restored.dcm")
    np.testing.assert_array_equal(back.data[0, 0].numpy(), expected - 1024.0)


@needs_medical
def test_dicom_non_unit_slope_round_trips_within_one_stored_unit(tmp_path):
    stored = _rng(1).integers(0, 4095, size=(4, 4), endpoint=True).astype(np.uint16)
    _ct_dataset(tmp_path / "ct.dcm", stored, slope=0.5, intercept=-100.0)
    img = read_image(tmp_path / "ct.dcm")
    np.testing.assert_allclose(img.data[0, 0].numpy(), stored * 0.5 - 100.0)
    x = img.data + torch.from_numpy(_rng(2).uniform(-0.2, 0.2, (1, 1, 4, 4))).float()
    write_image(tmp_path / "r.dcm", x, like=img)
    back = read_image(tmp_path / "r.dcm")
    assert (back.data - x).abs().max() <= 0.25 + 1e-5  # half a stored unit of 0.5 HU


@needs_medical
def test_dicom_multi_frame_signed(tmp_path):
    stored = _rng(5).integers(-2048, 2047, size=(3, 4, 5), endpoint=True).astype(np.int16)
    _ct_dataset(tmp_path / "mf.dcm", np.zeros((4, 5), np.uint16), intercept=0.0)
    ds = pydicom.dcmread(tmp_path / "mf.dcm")
    ds.NumberOfFrames, ds.PixelRepresentation, ds.PixelData = 3, 1, stored.astype("<i2").tobytes()
    ds.save_as(tmp_path / "mf.dcm")
    img = read_image(tmp_path / "mf.dcm")
    assert img.data.shape == (3, 1, 4, 5) and img.meta["value_range"] == (-2048.0, 2047.0)
    np.testing.assert_array_equal(img.data[:, 0].numpy(), stored)
    write_image(tmp_path / "mf2.dcm", -img.data, like=img)  # -(-2048) clips to 2047
    back = pydicom.dcmread(tmp_path / "mf2.dcm")
    assert int(back.NumberOfFrames) == 3
    np.testing.assert_array_equal(back.pixel_array, np.minimum(-stored.astype(np.int32), 2047))


@needs_medical
def test_suffixless_dicom_is_found_and_read(tmp_path):
    _ct_dataset(tmp_path / "IM0001", np.full((2, 3), 1024, np.uint16))
    (tmp_path / "notes.txt").write_text("x")
    assert find_inputs(tmp_path) == [tmp_path / "IM0001"]
    assert read_image(tmp_path / "IM0001").data.abs().max() == 0.0


# ----------------------------------------------------------------------------- NIfTI


@needs_medical
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_volume_round_trip_keeps_affine_and_orientation(tmp_path, suffix):
    vol = (_rng().standard_normal((6, 5, 4)) * 100).astype(np.float32)
    affine = np.array([[0.0, -0.8, 0.0, 10.0], [0.0, 0.0, 2.5, -4.0], [-1.2, 0.0, 0.0, 7.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(vol, affine), tmp_path / f"v{suffix}")
    img = read_image(tmp_path / f"v{suffix}")
    assert img.kind == "nifti" and img.data.shape == (4, 1, 6, 5)
    np.testing.assert_array_equal(img.data[2, 0].numpy(), vol[:, :, 2])  # slice k is vol[:, :, k]

    write_image(tmp_path / f"w{suffix}", img.data * 2, like=img)
    out = nib.load(tmp_path / f"w{suffix}")
    np.testing.assert_array_equal(out.get_fdata(), 2 * vol)
    np.testing.assert_allclose(out.affine, affine)
    assert nib.aff2axcodes(out.affine) == nib.aff2axcodes(affine) == ("I", "L", "A")


@needs_medical
def test_nifti_2d_and_int_scaled(tmp_path):
    a = np.arange(12, dtype=np.int16).reshape(3, 4)
    src = nib.Nifti1Image(a, np.diag([2.0, 3.0, 1.0, 1.0]))
    src.header.set_slope_inter(0.5, 10.0)
    nib.save(src, tmp_path / "s.nii")
    img = read_image(tmp_path / "s.nii")
    assert img.data.shape == (1, 1, 3, 4)
    np.testing.assert_array_equal(img.data[0, 0].numpy(), a * 0.5 + 10.0)
    write_image(tmp_path / "t.nii", img.data, like=img)
    out = nib.load(tmp_path / "t.nii")
    assert out.shape == (3, 4)
    np.testing.assert_array_equal(out.get_fdata(), a * 0.5 + 10.0)


# ----------------------------------------------------------------------------- inputs and padding


def test_find_inputs_folders_globs_files(tmp_path):
    for rel in ["b.png", "a.npy", "sub/c.tif", "sub/deep/d.nii.gz", ".hidden/e.png", "readme.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert find_inputs(tmp_path) == [tmp_path / p for p in ["a.npy", "b.png", "sub/c.tif", "sub/deep/d.nii.gz"]]
    assert find_inputs(str(tmp_path / "**" / "*.tif")) == [tmp_path / "sub/c.tif"]
    assert find_inputs(str(tmp_path / "*")) == [tmp_path / "a.npy", tmp_path / "b.png"]  # txt skipped
    # explicit order kept, duplicates dropped
    listed = find_inputs([tmp_path / "b.png", tmp_path, tmp_path / "a.npy"])
    assert listed[:2] == [tmp_path / "b.png", tmp_path / "a.npy"] and len(listed) == 4
    assert len(find_inputs([tmp_path, tmp_path])) == 4


@pytest.mark.parametrize("hw,m", [((5, 7), 4), ((8, 8), 8), ((3, 2), 8), ((1, 5), (4, 8))])
def test_pad_to_multiple(hw, m):
    x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(0))
    xp, crop = pad_to_multiple(x, m)
    mh, mw = (m, m) if isinstance(m, int) else m
    assert xp.shape[-2] % mh == 0 and xp.shape[-1] % mw == 0
    assert xp.shape[-2] - hw[0] < mh and xp.shape[-1] - hw[1] < mw
    assert torch.equal(crop(xp), x)
    up = xp.repeat_interleave(2, -2).repeat_interleave(2, -1)  # a x2 super-resolved output
    assert crop(up).shape[-2:] == (2 * hw[0], 2 * hw[1])


def test_pad_is_reflection():
    x = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 1, 2, 5)
    xp, _ = pad_to_multiple(x, (2, 8))
    assert xp[0, 0, 0].tolist() == [0, 1, 2, 3, 4, 3, 2, 1]
    assert torch.equal(xp[0, 0, 1], xp[0, 0, 0])


# ----------------------------------------------------------------------------- errors


def _raises(exc, match, fn, *args, **kwargs):
    with pytest.raises(exc, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)  # one line
    return str(info.value)


def test_error_messages(tmp_path, monkeypatch):
    _raises(FileNotFoundError, "missing.png: no such file", read_image, tmp_path / "missing.png")
    (tmp_path / "a.bmp").write_bytes(b"BM")
    _raises(ValueError, r"a.bmp: unsupported suffix '.bmp'; use one of .*\.png", read_image, tmp_path / "a.bmp")
    _raises(ValueError, "unsupported suffix '.bmp'", find_inputs, tmp_path / "a.bmp")
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    _raises(ValueError, "bad.png: cannot read as PNG", read_image, tmp_path / "bad.png")

    nan = np.zeros((3, 3), np.float32)
    nan[1, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    _raises(ValueError, "nan.npy: 1 of 9 values are NaN or inf", read_image, tmp_path / "nan.npy")
    np.save(tmp_path / "amb.npy", np.zeros((5, 6, 7)))
    _raises(ValueError, r"amb.npy: array of shape \(5, 6, 7\) is ambiguous", read_image, tmp_path / "amb.npy")
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 2)), b=np.zeros((2, 2)))
    _raises(ValueError, r"two.npz: NPZ holds arrays \['a', 'b'\]; .* 'image' or 'x'", read_image, tmp_path / "two.npz")

    (tmp_path / "empty").mkdir()
    _raises(ValueError, "empty: folder holds no supported images", find_inputs, tmp_path / "empty")
    _raises(FileNotFoundError, "pattern matched nothing", find_inputs, str(tmp_path / "*.tif"))
    _raises(FileNotFoundError, "nowhere: no such file or folder", find_inputs, tmp_path / "nowhere")

    x = torch.zeros(1, 1, 4, 4)
    _raises(ValueError, "writing DICOM needs like=", write_image, tmp_path / "o.dcm", x)
    _raises(ValueError, "bit_depth 16 is not available for JPEG", write_image, tmp_path / "o.jpg", x, bit_depth=16)
    _raises(ValueError, r"PNG holds one gray or RGB image but data has shape \(2, 1, 4, 4\)", write_image,
            tmp_path / "o.png", torch.zeros(2, 1, 4, 4))
    _raises(ValueError, "data holds NaN or inf values", write_image, tmp_path / "o.npy", x / 0)
    _raises(ValueError, "m must be a positive integer", pad_to_multiple, x, 0)
    assert not any(p.name.startswith("o.") for p in tmp_path.iterdir())  # nothing half-written

    monkeypatch.setitem(sys.modules, "pydicom", None)  # as if the medical extra were not installed
    _ct_path = tmp_path / "x.dcm"
    _ct_path.write_bytes(b"\0" * 132)
    _raises(ValueError, r"pydicom is needed .* pip install 'invdiff\[medical\]'", read_image, _ct_path)


def test_image_is_a_plain_dataclass(tmp_path):
    write_image(tmp_path / "a.png", torch.full((1, 1, 2, 2), 0.5))
    img = read_image(tmp_path / "a.png")
    assert isinstance(img, Image) and img.path == tmp_path / "a.png"
    assert img.data.flatten().tolist() == [np.float32(128 / 255)] * 4
