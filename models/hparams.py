"""The one hyperparameter object of CM-GAN; defaults are the paper's (see CMGAN.md)."""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from models import encoder_kinds
from models.config_errors import ConfigError, as_bool, as_float, as_int, check_range

WRONG_PAIRS = ("mismatched", "matched")
SEMANTIC_CLASSIFIERS = ("dense", "cosine")
# What the encoders output for retrieval: "common" = the common representation (the paper);
# "common_and_label" = the L2-normalised common vector beside the L2-normalised class posteriors
# of the modality's semantic classifier (common_dim + num_classes values), so the ranking also
# weighs how alike the two items' predicted classes are.
RETRIEVAL_SPACES = ("common", "common_and_label")
# Float precision of training (Keras dtype policies): "mixed_float16" computes in float16 with
# float32 variables, losses and outputs, and scales each loss (GPUs with tensor cores);
# "mixed_bfloat16" needs no loss scaling (TPUs, recent GPUs).
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
# What each generator's input is (models/encoder_kinds.py): "features" = precomputed vectors (also
# what Beam computes with a keras:/torch: encoder); "cnn" = pixels into models.image_encoder;
# "kim_cnn" = token ids into models.text_encoder. Both end-to-end encoders are trained with the
# generator.
IMAGE_ENCODERS = encoder_kinds.model_inputs(encoder_kinds.IMAGE)
TEXT_ENCODERS = encoder_kinds.model_inputs(encoder_kinds.TEXT)


@dataclasses.dataclass(frozen=True)
class CMGANHParams:
    # Architecture.
    common_dim: int = 1024  # shared encoder-2 output: the retrieval space
    hidden_dim: int = 1024  # encoder-1 and decoder hidden width
    inter_disc_hidden: int = 512
    leaky_relu_slope: float = 0.2
    # Regularisation the paper does not use (0 = off); useful on small, weak-feature sets.
    input_dropout: float = 0.0  # on each modality's input feature, before encoder 1
    dropout: float = 0.0  # after encoder 1 and before the semantic classifier
    shared_encoder: bool = True  # False unties encoder 2 (ablation)
    # Input stages (see IMAGE_ENCODERS / TEXT_ENCODERS). Their outputs are the "features" the
    # autoencoders reconstruct and the discriminators see (held fixed for the discriminators).
    image_encoder: str = "features"
    image_size: int = 32  # cnn: square side of the resized RGB image
    cnn_channels: int = 32  # cnn: width of the first conv block (doubles per block)
    cnn_feature_dim: int = 256  # cnn: output feature size
    text_encoder: str = "features"
    text_vocab_size: int = 20000  # kim_cnn: vocabulary Transform keeps (most frequent, train)
    text_max_tokens: int = 256  # kim_cnn: tokens kept per text (longer texts are cut)
    word_embedding_dim: int = 64  # kim_cnn
    kim_filters: int = 100  # kim_cnn: filters per width (3, 4, 5)
    kim_dropout: float = 0.5  # kim_cnn: on the sentence feature, as Kim (2014)
    # GAN-CLS "wrong" fake of the inter-modality discriminators: "mismatched" feeds
    # (E_I(x'), x) -- another class's common representation with the own feature, the
    # GAN-CLS intent; "matched" feeds (E_I(x'), x') as the authors' Torch code does.
    wrong_pair: str = "mismatched"
    # Semantic classifier on the common representation. "dense": Dense -> softmax per
    # modality (the paper). "cosine": logits = cosine_scale * cos(w_c, z), which makes the
    # class geometry angular, i.e. the geometry cosine retrieval ranks by.
    semantic_classifier: str = "dense"
    cosine_scale: float = 10.0
    shared_classifier: bool = False  # one class-weight matrix for both modalities
    retrieval_space: str = "common"  # RETRIEVAL_SPACES
    semantic_weight: float = 1.0  # weight of the softmax loss in each generator loss
    # Weight of the four adversarial terms in the generator losses. 0 is the "no GAN" ablation:
    # the same generators and shared layer trained by the other losses, no discriminator steps.
    adversarial_weight: float = 1.0
    # Common-space losses from DSCMR (Zhen et al., CVPR 2019), off in the paper's CM-GAN:
    # "pair_loss": logistic loss on cosine_scale * cos(z_i, z_j) over the batch's cross- and
    # same-modality pairs, target 1 for the same class (what cosine retrieval ranks by);
    # "invariance": squared distance between a matched pair's L2-normalised common vectors.
    pair_loss_weight: float = 0.0
    invariance_weight: float = 0.0
    # Cross-modal distillation (Gupta et al., CVPR 2016): cross-entropy of each modality's class
    # posteriors against its paired item's posteriors in the other modality (held fixed).
    distillation_weight: float = 0.0
    # Optimisation (Adam for all six optimizers).
    learning_rate: float = 1e-3
    beta_1: float = 0.5
    beta_2: float = 0.999
    lr_halving_epochs: int = 100
    weight_decay: float = 0.0  # decoupled (AdamW-style); the paper uses none
    # Exponential moving average of the generator weights (0 = off, the paper). Validation,
    # selection and export then use the averaged weights, which smooths GAN oscillation.
    ema_decay: float = 0.0
    batch_size: int = 64  # global batch, class-balanced
    generator_steps: int = 5  # per iteration: 1 step per discriminator, then 5 x (G_I, G_T)
    epochs: int = 2000  # as the authors' release; select the epoch on validation
    # Model selection on the validation split (never test).
    validate_every: int = 5  # epochs between validation MAP evaluations
    early_stopping_patience: int = 0  # validations without improvement before stopping; 0 = off
    # Refit: once validation has chosen the epoch count, train the same seed again on train +
    # validation for that many epochs and return (export) that model; the validation figures
    # reported stay the selection run's, since the refit model has seen the validation pairs.
    refit_on_validation: bool = False
    seed: int = 0
    # Seed ensemble (models/ensemble.py): this many CM-GANs that differ only in their seed
    # (seed, seed + 100, ...: initialisation and batch stream), trained side by side in one fit;
    # they retrieve with the concatenation of their L2-normalised vectors (the mean of their
    # cosines), so the served embedding is this many times longer. 1 = one CM-GAN (the paper).
    ensemble_members: int = 1
    jit_compile: bool = False
    precision: str = "float32"  # PRECISIONS

    def __post_init__(self):
        """Type and range of every field, so a bad value fails here, naming its key, and not
        as a NaN loss hours later (models.config_errors.ConfigError)."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            kind = type(field.default)
            if kind is bool:
                ok = isinstance(value, bool)
            elif kind is int:
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif kind is float:
                ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
                      and math.isfinite(value))
            else:
                ok = isinstance(value, kind)
            if not ok:
                raise ConfigError(field.name, f"must be a finite {kind.__name__}, got {value!r}"
                                  if kind is float else f"must be a {kind.__name__}, got "
                                                        f"{value!r}")
        choices = {"wrong_pair": WRONG_PAIRS, "semantic_classifier": SEMANTIC_CLASSIFIERS,
                   "retrieval_space": RETRIEVAL_SPACES,
                   "image_encoder": IMAGE_ENCODERS, "text_encoder": TEXT_ENCODERS,
                   "precision": PRECISIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(name, f"must be one of {', '.join(allowed)} (keras:/torch: "
                                        f"encoders run in Beam and give features), got "
                                        f"{getattr(self, name)!r}" if name.endswith("encoder")
                                  else f"must be one of {', '.join(allowed)}, got "
                                       f"{getattr(self, name)!r}")
        for name in ("common_dim", "hidden_dim", "inter_disc_hidden", "batch_size",
                     "generator_steps", "epochs", "lr_halving_epochs", "validate_every",
                     "image_size", "cnn_channels", "cnn_feature_dim", "text_vocab_size",
                     "text_max_tokens", "word_embedding_dim", "kim_filters",
                     "ensemble_members"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be positive (>= 1), got {getattr(self, name)}")
        for name in ("early_stopping_patience", "seed"):
            check_range(name, getattr(self, name), 0)
        for name in ("learning_rate", "cosine_scale"):
            check_range(name, getattr(self, name), 0.0, low_open=True)
        for name in ("leaky_relu_slope", "semantic_weight", "adversarial_weight",
                     "pair_loss_weight", "invariance_weight", "distillation_weight",
                     "weight_decay"):
            check_range(name, getattr(self, name), 0.0)
        for name in ("input_dropout", "dropout", "kim_dropout", "beta_1", "beta_2",
                     "ema_decay"):  # probabilities / decay rates: 1 would never move
            check_range(name, getattr(self, name), 0.0, 1.0, high_open=True)

    def replace(self, **overrides: Any) -> "CMGANHParams":
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "CMGANHParams":
        """Builds from a (possibly partial) dict; unknown keys are an error, not ignored."""
        values = dict(values or {})
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(unknown[0], "is not a CM-GAN hyperparameter",
                              f"unknown CM-GAN hyperparameters: {', '.join(unknown)}; "
                              f"known: {', '.join(known)}")
        typed = {}
        for key, value in values.items():
            kind = type(known[key].default)
            if kind is bool:
                typed[key] = as_bool(key, value)
            elif kind is int:
                typed[key] = as_int(key, value)
            elif kind is float:
                typed[key] = as_float(key, value)
            else:
                typed[key] = value if isinstance(value, kind) else str(value)
        return cls(**typed)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


# Per-dataset settings that differ from the paper's, chosen on each dataset's validation split
# (never test). With the paper's per-modality Dense classifiers the two modalities' class
# directions differ and cross-modal cosine MAP on SIFT/LDA features stays near 0.18-0.19
# (Wikipedia val); one shared cosine classifier puts both modalities' classes on the same
# directions (val ~0.24-0.25). The generator-weight average (ema_decay 0.99) won on mean
# validation MAP over model seeds 0 and 1 (0.2470 vs 0.2466 without). XLA is on: 3-4x
# faster on CPU (single replica only).
RETRIEVAL_TUNED: dict[str, Any] = {"semantic_classifier": "cosine", "shared_classifier": True,
                                   "semantic_weight": 5.0, "learning_rate": 3e-4,
                                   "ema_decay": 0.99, "jit_compile": True}

# The default for a dataset without a preset of its own (`features`, `raw`, `examples`), chosen on
# validation (split seeds 0-1 of pascal_sentence_dev with EfficientNet-Lite0 / MiniLM features;
# README "Repeated-split benchmark"): the shared cosine classifier and weight average, dropout
# against over-fitting a few hundred pairs (+0.03 val), DSCMR's pairwise common-space loss, and
# 256-d layers (level with 1024-d on validation at a fraction of the cost). A budget of 60 epochs
# with early stopping after 5 validations without gain: minutes on 2 cores where the paper's
# 2,000 epochs take hours (validation peaked at epochs 20-40). Retrieval with the class
# posteriors beside the common vector won on validation under every preset it was tried with
# (5 split seeds each): this one on pascal_sentence_dev 0.7439 -> 0.7584, `pretrained` 0.7642 ->
# 0.7761, the former `wikipedia` preset on LDA-10 / MiniLM texts 0.2342 -> 0.2490 / 0.2581 ->
# 0.2759. Refitting on train + validation for the chosen epochs won on validation wherever it
# was measured (benchmarks/refit_check.py: nested holdout, 20 split seeds each, one model):
# `pretrained` on pascal_sentence_dev +0.0073 [+0.0014, +0.0132], `wikipedia` on LDA-10 and
# whole-article MiniLM texts together +0.0054 [+0.0017, +0.0091]; it trains the chosen epochs
# again, on train + validation (the selection run went on until early stopping).
GENERAL: dict[str, Any] = {**RETRIEVAL_TUNED, "pair_loss_weight": 5.0, "dropout": 0.5,
                           "input_dropout": 0.2, "hidden_dim": 256, "common_dim": 256,
                           "inter_disc_hidden": 256, "epochs": 60, "validate_every": 3,
                           "early_stopping_patience": 5, "retrieval_space": "common_and_label",
                           "refit_on_validation": True}

DATASET_PRESETS: dict[str, dict[str, Any]] = {
    # The quick start: stop once validation MAP stops rising (30 epochs at most). The weight
    # average looks back ~20 steps instead of ~100 (15 steps an epoch): at 0.99 validation MAP
    # still reached only 0.72 at epoch 22 (0.74 at epoch 10 with 0.95). Captions have at most 18
    # tokens and the vocabulary ~100 words; no XLA: its compile takes longer than the training.
    "demo": {**RETRIEVAL_TUNED, "epochs": 30, "validate_every": 2, "early_stopping_patience": 2,
             "ema_decay": 0.95, "text_max_tokens": 32, "text_vocab_size": 1000,
             "jit_compile": False},
    "demo-features": {**RETRIEVAL_TUNED, "epochs": 20, "validate_every": 2},
    # `general` won on validation over 5 validation redraws (`cmgan benchmark`, README
    # "Repeated-split benchmark"): LDA-10 texts 0.2619 against 0.2490, MiniLM texts (then the
    # first 256 word pieces) 0.2807 against 0.2759 for the former preset (RETRIEVAL_TUNED, 40
    # epochs, both retrieving with the class posteriors beside the common vector; 0.2342 and
    # 0.2581 without them).
    # text_vocab_size only matters with --text-encoder kim_cnn (raw article texts): 5,000 words
    # gave validation mean MAP 0.2540 against 0.2467 with 20,000 under the former preset (512
    # tokens instead of 256: lower, 0.2337 vs 0.2426 at epoch 20, stopped there).
    # A seed ensemble of 3 (models/ensemble.py) raised validation mean MAP over the same 5
    # redraws on both text inputs: whole-article MiniLM 0.2928 -> 0.2982, LDA-10 0.2619 ->
    # 0.2648 (paired intervals just across 0; separately trained members: MiniLM +0.0106
    # [+0.0036, +0.0177]), for three times the training and a served vector three times as long.
    # Five members: LDA-10 validation 0.2656 against 0.2648 (+0.0008 [-0.0012, +0.0028]), not
    # worth 5/3 of the training.
    "wikipedia": {**GENERAL, "text_vocab_size": 5000, "ensemble_members": 3},
}

# Strong pretrained features of a few hundred pairs (`--preset pretrained`): dropping 80% of the
# input features each step, with a 150-epoch budget, raised pascal_sentence_dev validation MAP
# from 0.7439 to 0.7642 (5 split seeds; 0.5: 0.7533, 0.7: 0.7598, 0.9: 0.7625). Not the general
# default: on Wikipedia's 128-d SIFT it lowers validation MAP (LDA-10 0.2255 -> 0.1942, seed 0).
# Cross-modal distillation (each modality's head also fits its pair's posteriors in the other)
# raised pascal_sentence_dev validation MAP over 10 split seeds (one model, no refit): weight 10
# +0.0080 [+0.0036, +0.0123] (9 of 10 positive), 5 +0.0061 [+0.0033, +0.0089]; 20 was level
# with 10 on seeds 0-4 (0.7862 against 0.7868). Level on Wikipedia at weight 5 (LDA-10 +0.0010,
# whole-article MiniLM +0.0026, intervals across 0), so it stays out of `general`.
PRETRAINED: dict[str, Any] = {**GENERAL, "input_dropout": 0.8, "epochs": 150,
                              "distillation_weight": 10.0}
# Named presets (`--preset`): "paper" is CMGANHParams' defaults, the configuration of CMGAN.md.
PRESETS: dict[str, dict[str, Any]] = {"paper": {}, "general": GENERAL, "pretrained": PRETRAINED,
                                      **DATASET_PRESETS}


def hparams_for_dataset(dataset: str, overrides: dict[str, Any] | None = None,
                        preset: str | None = None) -> CMGANHParams:
    """Paper defaults, then the named preset (default: the dataset's own, else "general"),
    then explicit overrides."""
    if preset is not None and preset not in PRESETS:
        raise ConfigError("preset", f"must be one of {', '.join(PRESETS)}, got {preset!r}")
    chosen = PRESETS[preset] if preset is not None else DATASET_PRESETS.get(dataset, GENERAL)
    return CMGANHParams.from_dict({**chosen, **(overrides or {})})
