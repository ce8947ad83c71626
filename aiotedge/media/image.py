"""Photo decoding and preprocessing for stage 0 (and for the converter's verify)."""

from __future__ import annotations

import inspect
import io
import logging
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from aiotedge.contracts.errors import ImageError, ModelError
from aiotedge.contracts.manifest import Preprocessing
from aiotedge.contracts.tensors import TensorSpec

log = logging.getLogger(__name__)

#: Formats a camera may send. Pillow can open many more, but a daemon on the network should
#: only parse the few a camera produces.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
#: A camera frame larger than this is refused before its pixels are decoded: a few KB of PNG
#: can otherwise expand to hundreds of MB on a board with 1 GB.
MAX_PIXELS = 4096 * 4096
#: Modes with 8-bit channels, which `convert("RGB")` maps without clipping. Pillow opens 16-bit
#: RGB(A) and grey+alpha PNGs in these already, keeping the high byte of each value.
EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "CMYK"})
#: 16-bit grey PNGs as Pillow opens them ("I" in older versions): converting them to RGB
#: would clip every value above 255 to white instead of scaling it.
SIXTEEN_BIT_GREY_MODES = frozenset({"I;16", "I;16B", "I;16L", "I"})


def list_images(folder: Path | str) -> list[Path]:
    """The photos in a folder that stage 0 accepts, by name.

    Anything else named like a photo (a folder, a looping or broken symlink, an unreadable or
    broken file) is skipped with a warning: one bad entry must not hide the good photos, nor
    stop a camera daemon that systemd would then restart forever.
    """
    folder = Path(folder)
    try:
        candidates = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    except OSError as exc:
        raise ImageError(f"{folder}: not a folder of images ({exc.strerror})") from None
    photos = []
    for path in candidates:
        problem = _unusable(path)
        if problem:
            log.warning("skipped %s: %s", path, problem)
        else:
            photos.append(path)
    if not photos:
        raise ImageError(f"{folder}: no usable photo ({', '.join(IMAGE_SUFFIXES)})")
    return photos


def read_photo(path: Path) -> bytes:
    """The bytes of a photo `list_images` accepted (it checks every photo, once)."""
    try:
        return path.read_bytes()
    except OSError as exc:  # removed or replaced since it was listed
        raise ImageError(f"{path}: {exc.strerror or exc}") from None


def _unusable(path: Path) -> str | None:
    """Why stage 0 could not use the file, if it could not."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a pipe would block the read below forever
            return "not a regular file"
        decode_image(path.read_bytes())
    except OSError as exc:
        return exc.strerror or str(exc)
    except ImageError as exc:
        return str(exc)
    return None


@contextmanager
def _refused_as(problem: str) -> Iterator[None]:
    """Pillow's many exceptions for a bad file as one ImageError line: what is wrong, and why."""
    try:
        yield
    except UnidentifiedImageError:
        raise ImageError("not a JPEG, PNG or BMP image") from None
    except (OSError, SyntaxError, ValueError, struct.error, Image.DecompressionBombError) as exc:
        raise ImageError(f"{problem}: {exc}") from None


def decode_image(data: bytes) -> Image.Image:
    """The photo as its camera meant it to be seen, so the model sees what a person would.

    Cameras store the sensor's rows as read and record in EXIF how to turn them upright.
    """
    with _refused_as("broken image"):
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    width, height = image.size
    if width * height > MAX_PIXELS:  # turning it upright swaps the sides, not their product
        raise ImageError(f"image of {width}x{height} pixels is larger than {MAX_PIXELS} pixels")
    with _refused_as("broken image"):  # a known format, but broken
        image.load()
    with _refused_as("broken EXIF"):  # which way is up is unknown
        image = _upright(image)
    return eight_bit(image)


#: Pillow 9.5 and later turn an image upright in place; Debian 12's Pillow 9.4 (what a 32-bit
#: board runs, docs/deploy-pi-cluster.md) returns an upright copy
_UPRIGHT_IN_PLACE = "in_place" in inspect.signature(ImageOps.exif_transpose).parameters


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says, without a copy where Pillow can."""
    if not _UPRIGHT_IN_PLACE:
        return ImageOps.exif_transpose(image)
    ImageOps.exif_transpose(image, in_place=True)
    return image


#: EXIF orientations whose picture is stored on its side (upright, its sides swap)
_SIDEWAYS_ORIENTATIONS = frozenset({5, 6, 7, 8})
_ORIENTATION_TAG = 0x0112


def upright_size(data: bytes) -> tuple[int, int]:
    """The width and height `decode_image` gives the photo, read from its header alone (a
    camera passing its JPEGs on as they are must not decode each to say its size)."""
    with _refused_as("broken image"):
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    with _refused_as("broken EXIF"):
        sideways = image.getexif().get(_ORIENTATION_TAG) in _SIDEWAYS_ORIENTATIONS
    width, height = image.size
    return (height, width) if sideways else (width, height)


def eight_bit(image: Image.Image) -> Image.Image:
    """The image in a mode `preprocess` converts to RGB exactly, or an ImageError saying why not.

    16-bit grey keeps the high byte of its significant bits. Sensors of 10, 12 or 14 bits
    (thermal and depth cameras, machine-vision ones) store their values unscaled in 16-bit
    PNGs: keeping the high byte of 16 would make their photos near black. The number of
    significant bits is taken as the fewest even number, 8 at least, that holds the brightest
    value: a full-range photo decodes as Pillow decodes 16-bit colour, a 12-bit one as the
    8-bit photo it shows.
    """
    if image.mode in EIGHT_BIT_MODES:
        return image
    if image.mode not in SIXTEEN_BIT_GREY_MODES:
        raise ImageError(f"{image.mode} pixels have no exact 8-bit RGB form")
    values = np.asarray(image)
    if values.min() < 0 or values.max() > 0xFFFF:
        raise ImageError("16-bit grey image with values outside 0..65535")
    bits = int(values.max()).bit_length()
    bits = max(8, bits + bits % 2)
    return Image.fromarray((values >> (bits - 8)).astype(np.uint8))


def mask_png(mask: np.ndarray, frame_id: str) -> bytes:
    """A class mask (the class index of each pixel) as a grey PNG, the frame's id in its
    `frame_id` text chunk: any image tool opens it, a program reads the classes back exactly."""
    info = PngInfo()
    info.add_text("frame_id", frame_id)
    out = io.BytesIO()
    Image.fromarray(mask).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def model_size(image: Image.Image, prep: Preprocessing) -> Image.Image:
    """The photo in RGB at the model's input size (bilinear, as `prep.resize` says): what
    `preprocess` normalises. Pillow's affine transform samples the 2x2 nearest pixels of each
    output pixel's centre without widening its filter: "sampled" bilinear."""
    rgb = image.convert("RGB")
    size = (prep.width, prep.height)
    if prep.resize == "sampled":
        scale = (rgb.width / prep.width, 0, 0, 0, rgb.height / prep.height, 0)
        return rgb.transform(size, Image.Transform.AFFINE, scale, Image.Resampling.BILINEAR)
    return rgb.resize(size, Image.Resampling.BILINEAR)


def preprocess(image: Image.Image, prep: Preprocessing, spec: TensorSpec) -> np.ndarray:
    """The model input for a photo: RGB, bilinear resize, (pixel - mean) / std, quantize."""
    resized = model_size(image, prep)
    values = (np.asarray(resized, dtype=np.float32) - np.float32(prep.mean)) / np.float32(prep.std)
    dtype = np.dtype(spec.dtype)
    if dtype.kind in "iu":
        if spec.quantized:
            values = values / np.float32(spec.scale) + np.float32(spec.zero_point)
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    return values.astype(dtype).reshape(spec.shape)


def default_preprocessing(spec: TensorSpec, mean: float | None, std: float | None) -> Preprocessing:
    """What the model's input tensor says it wants, where `mean` and `std` are not given.

    - a quantized integer input: raw pixels (mean = zero point, std = 1/scale), the convention
      of quantized image models, whose input quantization maps 0..255 onto the real range;
    - uint8 with no quantization (MoveNet): raw pixels 0..255 (mean 0, std 1);
    - float: [-1, 1] (mean 127.5, std 127.5), the range of MobileNet and DeepLab;
    - any other integer input without quantization: no convention, refused unless both given.
    `split_model` passes the normalisation recorded by `import` instead, when there is one.
    """
    if len(spec.shape) != 4 or spec.shape[3] != 3:
        raise ModelError(
            f"input {spec.name!r} has shape {list(spec.shape)}; an NHWC RGB image input "
            "(1, height, width, 3) is needed to preprocess photos"
        )
    dtype = np.dtype(spec.dtype)
    if spec.quantized:
        default_mean, default_std = float(spec.zero_point), 1.0 / spec.scale
    elif dtype == np.uint8:
        default_mean, default_std = 0.0, 1.0
    elif dtype.kind == "f":
        default_mean, default_std = 127.5, 127.5
    elif mean is None or std is None:
        raise ModelError(
            f"input {spec.name!r} is {spec.dtype} with no quantization: which values it wants "
            "for a pixel cannot be told from the model; give them (aiotedge-convert split or plan "
            "--mean M --std S: input = (pixel - M) / S)")
    else:
        default_mean, default_std = mean, std
    return Preprocessing(
        width=spec.shape[2],
        height=spec.shape[1],
        mean=default_mean if mean is None else float(mean),
        std=default_std if std is None else float(std),
    )
