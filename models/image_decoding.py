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


def image_format(data: bytes) -> str | None:
    """'JPEG' or 'PNG' from the magic bytes; None for anything else (GIF, BMP, text, ...)."""
    for name, magic in IMAGE_FORMATS.items():
        if data.startswith(magic):
            return name
    return None


def check_image(data: bytes) -> tuple[str, str] | None:
    """(quarantine reason, human-readable detail) for a bad image, or None for a good one.

    Pillow decodes the whole image with LOAD_TRUNCATED_IMAGES off, so truncation is an error; a
    PNG cut inside its final IEND chunk decodes in Pillow but not in TF, so IEND is required.
    """
    from PIL import Image, ImageFile  # pylint: disable=import-outside-toplevel

    found = image_format(data)
    if found is None:
        head = data[:8].hex() if data else "empty file"
        return NOT_AN_IMAGE, f"not JPEG or PNG (first bytes: {head})"
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


def decode_and_resize(encoded: tf.Tensor, size: int) -> tf.Tensor:
    """Scalar tf.string (JPEG/PNG bytes) -> tf.uint8 [size, size, 3] RGB.

    Grey and RGBA images become RGB (channels=3); the resize is bilinear with antialiasing, then
    rounded and clipped, so the result is exactly reproducible in any graph (tf.function,
    tf.map_fn in a serving signature).
    """
    is_jpeg_or_png = tf.logical_or(
        tf.equal(tf.strings.substr(encoded, 0, len(JPEG_MAGIC)), JPEG_MAGIC),
        tf.equal(tf.strings.substr(encoded, 0, len(PNG_MAGIC)), PNG_MAGIC))
    check = tf.debugging.Assert(is_jpeg_or_png, ["image must be JPEG or PNG"])
    with tf.control_dependencies([check]):  # GIF/BMP decode in TF but Beam rejects them
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    resized = tf.image.resize(tf.cast(image, tf.float32), [size, size], method="bilinear",
                              antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)
