"""Encoder kinds: the one table of what can encode each modality, read by every layer.

Per modality an encoder is one of:

- ``features``: the dataset ships vectors; nothing is computed.
- ``cnn`` (image) / ``kim_cnn`` (text): raw pixels / UTF-8 text go through Transform into the
  model's own end-to-end encoder (models/image_encoder.py, models/text_encoder.py).
- ``keras:<Application>`` / ``torch:<name>``: a pretrained network that Beam runs in the
  RawExampleGen (RunInference); the model then sees its output as features.

``model_input`` is the model's view of a kind, i.e. the values CMGANHParams' ``image_encoder`` and
``text_encoder`` take; the pipeline configuration accepts every ``name`` (a name ending in ``:``
is a family: an application or model name must follow it).
"""
from __future__ import annotations

import dataclasses

IMAGE, TEXT = "image", "text"
FEATURES, CNN, KIM_CNN = "features", "cnn", "kim_cnn"
KERAS_PREFIX, TORCH_PREFIX = "keras:", "torch:"
# The pretrained PyTorch encoders (components/torch_encoders.py describes them).
MINILM = "torch:minilm"
EFFICIENTNET_LITE0 = "torch:efficientnet-lite0"


@dataclasses.dataclass(frozen=True)
class EncoderKind:
    name: str  # an encoder, or a family prefix ending in ":" (a name must follow)
    modality: str  # IMAGE or TEXT
    in_beam: bool  # Beam computes its vectors (RunInference)
    model_input: str  # what the model's input stage is for it: features | cnn | kim_cnn

    def matches(self, spec: str) -> bool:
        if self.name.endswith(":"):
            return spec.startswith(self.name) and len(spec) > len(self.name)
        return spec == self.name


ENCODER_KINDS = (
    EncoderKind(FEATURES, IMAGE, in_beam=False, model_input=FEATURES),
    EncoderKind(CNN, IMAGE, in_beam=False, model_input=CNN),
    EncoderKind(KERAS_PREFIX, IMAGE, in_beam=True, model_input=FEATURES),
    EncoderKind(TORCH_PREFIX, IMAGE, in_beam=True, model_input=FEATURES),
    EncoderKind(FEATURES, TEXT, in_beam=False, model_input=FEATURES),
    EncoderKind(KIM_CNN, TEXT, in_beam=False, model_input=KIM_CNN),
    EncoderKind(MINILM, TEXT, in_beam=True, model_input=FEATURES),
)


def names(modality: str) -> tuple[str, ...]:
    """Every kind of ``modality`` as the configuration writes it (families end in ':')."""
    return tuple(k.name for k in ENCODER_KINDS if k.modality == modality)


def model_inputs(modality: str) -> tuple[str, ...]:
    """The model's input stages for ``modality`` (CMGANHParams' choices), in table order."""
    return tuple(dict.fromkeys(k.model_input for k in ENCODER_KINDS if k.modality == modality))


def find(spec: str, modality: str) -> EncoderKind | None:
    """The kind ``spec`` is an encoder of, or None when it is none of ``modality``'s."""
    return next((k for k in ENCODER_KINDS if k.modality == modality and k.matches(spec)), None)


def model_input(spec: str, modality: str) -> str:
    """What the model sees of ``spec``: keras:/torch: encoders ran in Beam, so features."""
    kind = find(spec, modality)
    if kind is None:
        raise ValueError(f"unknown {modality} encoder {spec!r}; expected one of "
                         f"{', '.join(names(modality))}")
    return kind.model_input


def is_keras(spec: str) -> bool:
    return spec.startswith(KERAS_PREFIX)


def is_torch(spec: str) -> bool:
    return spec.startswith(TORCH_PREFIX)
