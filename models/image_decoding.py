"""Decoding of encoded images (JPEG/PNG) to fixed-size RGB pixels, shared by Beam and serving.

``decode_and_resize`` is pure TensorFlow so the same ops run in the RawExampleGen (Beam) and in
the exported serving graph (``encode_image_bytes``): training and serving see identical pixels.
``image_problem`` is the stricter Python check Beam runs first, because TF's decoder accepts some
truncated JPEGs (it pads the missing scan lines with grey) and would let a broken file through.
"""
from __future__ import annotations

import io

import tensorflow as tf

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk (type + CRC); Pillow stops reading before it
IMAGE_FORMATS = {"JPEG": JPEG_MAGIC, "PNG": PNG_MAGIC}

NOT_AN_IMAGE = "not_an_image"
UNREADABLE_IMAGE = "unreadable_image"
IMAGE_TOO_LARGE = "image_too_large"
# A small file can declare a huge image (a 1.2 MB PNG of zeros decodes to 1.2 GB at 20000^2):
# dimensions are read from the header and checked against this before any decoding.
DEFAULT_MAX_IMAGE_PIXELS = 25_000_000


def image_format(data: bytes) -> str | None:
    """'JPEG' or 'PNG' from the magic bytes; None for anything else (GIF, BMP, text, ...)."""
    for name, magic in IMAGE_FORMATS.items():
        if data.startswith(magic):
            return name
    return None


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image header only (Pillow opens lazily); None if unreadable.

    Pillow itself refuses headers beyond twice its own bomb limit: those count as huge."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Image.DecompressionBombError:
        return (2**31 - 1, 2**31 - 1)
    except Exception:  # pylint: disable=broad-except  # Pillow raises many types here
        return None


def image_size_problem(data: bytes, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
                       ) -> str | None:
    """A detail message when the header declares more than ``max_pixels`` pixels, else None."""
    if not max_pixels:
        return None
    size = image_dimensions(data)
    if size is None or size[0] * size[1] <= max_pixels:
        return None
    return (f"{size[0]}x{size[1]} = {size[0] * size[1]} pixels; the limit is {max_pixels} "
            "(--max-image-pixels)")


def check_image(data: bytes, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
                ) -> tuple[str, str] | None:
    """(quarantine reason, human-readable detail) for a bad image, or None for a good one.

    The header's dimensions are checked first (``image_too_large``), so nothing huge is decoded.
    Pillow decodes the whole image with LOAD_TRUNCATED_IMAGES off, so truncation is an error; a
    PNG cut inside its final IEND chunk decodes in Pillow but not in TF, so IEND is required.
    Details never quote the file's bytes: the file may not be an image the user meant to share.
    """
    from PIL import Image, ImageFile  # pylint: disable=import-outside-toplevel

    found = image_format(data)
    if found is None:
        return NOT_AN_IMAGE, ("not JPEG or PNG (empty file)" if not data else
                              f"not JPEG or PNG ({len(data)} bytes, no JPEG/PNG signature)")
    too_large = image_size_problem(data, max_pixels)
    if too_large:
        return IMAGE_TOO_LARGE, too_large
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone flipped Pillow's global; truncation must fail
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != found:
                return NOT_AN_IMAGE, f"magic bytes say {found}, Pillow reads {image.format}"
            image.load()
    except Exception as err:  # pylint: disable=broad-except  # Pillow raises many types here
        return UNREADABLE_IMAGE, f"{found} does not decode: {type(err).__name__}: {err}"
    if found == "PNG" and PNG_END not in data[-64:]:
        return UNREADABLE_IMAGE, "PNG is truncated (no IEND chunk at the end)"
    return None


def image_problem(data: bytes) -> str | None:
    """The quarantine reason ('not_an_image' or 'unreadable_image') for bad bytes, else None."""
    problem = check_image(data)
    return problem[0] if problem else None


def header_pixels(encoded: tf.Tensor) -> tf.Tensor:
    """int64 width * height of a scalar JPEG/PNG string, read from its header (no decoding):
    the PNG IHDR chunk, or the JPEG SOF marker (``tf.image.extract_jpeg_shape``)."""
    is_png = tf.equal(tf.strings.substr(encoded, 0, len(PNG_MAGIC)), PNG_MAGIC)

    def png() -> tf.Tensor:
        padded = tf.strings.join([encoded, tf.constant(b"\0" * 24)])  # short files: 0 x 0
        raw = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, 16, 8), tf.uint8), tf.int64)
        width = raw[0] * 2**24 + raw[1] * 2**16 + raw[2] * 2**8 + raw[3]
        height = raw[4] * 2**24 + raw[5] * 2**16 + raw[6] * 2**8 + raw[7]
        return width * height

    def jpeg() -> tf.Tensor:
        shape = tf.image.extract_jpeg_shape(encoded, output_type=tf.int32)
        return tf.cast(shape[0], tf.int64) * tf.cast(shape[1], tf.int64)

    return tf.cond(is_png, png, jpeg)


def decode_and_resize(encoded: tf.Tensor, size: int,
                      max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> tf.Tensor:
    """Scalar tf.string (JPEG/PNG bytes) -> tf.uint8 [size, size, 3] RGB.

    Grey and RGBA images become RGB (channels=3); the resize is bilinear with antialiasing, then
    rounded and clipped, so the result is exactly reproducible in any graph (tf.function,
    tf.map_fn in a serving signature). An image whose header declares more than ``max_pixels``
    pixels fails with InvalidArgument (``image_too_large``) before it is decoded.
    """
    is_jpeg_or_png = tf.logical_or(
        tf.equal(tf.strings.substr(encoded, 0, len(JPEG_MAGIC)), JPEG_MAGIC),
        tf.equal(tf.strings.substr(encoded, 0, len(PNG_MAGIC)), PNG_MAGIC))
    checks = [tf.debugging.Assert(is_jpeg_or_png, ["image must be JPEG or PNG"])]
    if max_pixels:
        with tf.control_dependencies(checks):  # the header is only parsed for JPEG/PNG
            pixels = header_pixels(encoded)
        checks.append(tf.debugging.Assert(
            pixels <= max_pixels,
            [f"{IMAGE_TOO_LARGE}: the image has more than {max_pixels} pixels:", pixels]))
    with tf.control_dependencies(checks):  # GIF/BMP decode in TF but Beam rejects them
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    resized = tf.image.resize(tf.cast(image, tf.float32), [size, size], method="bilinear",
                              antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)
