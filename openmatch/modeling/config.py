"""``DRModelConfig``: what a dense-retrieval encoder is; ``TrainingSettings``: the loss settings kept with it.

Both are stored together in a checkpoint's ``openmatch_config.json`` (see :mod:`openmatch.modeling.checkpoint`),
but only the encoder decides an embedding, so only it takes part in index compatibility.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from ..errors import InputError

# Backbone classes whose representation comes from the decoder's first position (fed the start token).
DECODER_BACKBONES = ("T5Model", "MT5Model", "UMT5Model")
# Encoder-only classes of the T5 family (for --encoder_only).
T5_ENCODER_BACKBONES = ("T5EncoderModel", "MT5EncoderModel", "UMT5EncoderModel")

OPENMATCH_KEYS = ("tied", "plm_backbone", "pooling", "linear_head", "normalize")


@dataclass
class TrainingSettings:
    """Settings of the training loss that a checkpoint keeps, so that further training optimises the same loss.

    They never change an embedding: indexes ignore them (:meth:`DRModelConfig.encoding_json` leaves them out)
    and ``--temperature``, when given, replaces the stored value.
    """

    temperature: float = 1.0

    def to_json(self) -> dict[str, Any]:
        """The ``openmatch_config.json`` keys these settings are stored under."""
        return {"temperature": self.temperature}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainingSettings":
        """Read them from ``openmatch_config.json`` content; OpenMatch's has none (it trains at temperature 1)."""
        return cls(temperature=float(data.get("temperature", 1.0)))


@dataclass
class DRModelConfig:
    """The encoder of a bi-encoder (backbone class, pooling, head, normalisation), plus its ``training`` settings.

    ``to_openmatch_json`` writes OpenMatch v2's ``openmatch_config.json`` schema (``tied``,
    ``plm_backbone.{type,feature}``, ``pooling``, ``linear_head``, ``normalize``) plus our extra keys, so
    OpenMatch can read our tied checkpoints and we can read all of OpenMatch's.
    """

    tied: bool = True
    plm_backbone_type: str = "AutoModel"
    feature: str = "last_hidden_state"
    pooling: str = "first"
    linear_head: bool = False
    projection_in_dim: Optional[int] = None
    projection_out_dim: Optional[int] = None
    normalize: bool = False
    training: TrainingSettings = field(default_factory=TrainingSettings)

    @property
    def temperature(self) -> float:
        """The loss temperature the trainer uses (``training.temperature``)."""
        return self.training.temperature

    @property
    def uses_decoder(self) -> bool:
        """True when the representation is the decoder's first hidden state (T5 without --encoder_only)."""
        return self.plm_backbone_type in DECODER_BACKBONES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json_string(self) -> str:
        """JSON text of :meth:`to_dict` (the Hugging Face Trainer's TensorBoard callback logs the model config)."""
        import json

        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def _encoder_json(self) -> dict[str, Any]:
        """The encoder's fields in ``openmatch_config.json`` form: OpenMatch's keys first, then ours."""
        return {
            "tied": self.tied,
            "plm_backbone": {"type": self.plm_backbone_type, "feature": self.feature},
            "pooling": self.pooling,
            "linear_head": self.linear_head,
            "normalize": self.normalize,
            "projection_in_dim": self.projection_in_dim,
            "projection_out_dim": self.projection_out_dim,
        }

    def to_openmatch_json(self) -> dict[str, Any]:
        """The ``openmatch_config.json`` content: the encoder, then the training settings."""
        return {**self._encoder_json(), **self.training.to_json()}

    def encoding_json(self) -> dict[str, Any]:
        """The encoder's identity: the fields that decide what a text's embedding is, no training settings.

        Indexes record this, so a query encoder is checked against the index's model without tripping
        over the loss temperature, which never changes an embedding.
        """
        # encoder_only is implied by the backbone class and no longer stored in openmatch_config.json, but
        # indexes built before recorded it here and compare this dict as a whole: kept so they still match.
        return {**self._encoder_json(), "encoder_only": not self.uses_decoder}

    @classmethod
    def from_openmatch_json(cls, data: dict[str, Any], source: str = "model config") -> "DRModelConfig":
        """Read our or OpenMatch's ``openmatch_config.json`` content (OpenMatch's lacks the extra keys).

        ``source`` names the data in error messages (the checkpoint reader passes the file's path). Keys we
        no longer write (``encoder_only``, which the backbone class implies) are ignored.
        """
        missing = [key for key in OPENMATCH_KEYS if key not in data]
        if missing:
            raise InputError(f"{source}: missing key(s) {', '.join(missing)}")
        backbone = data["plm_backbone"]
        if not isinstance(backbone, dict) or "type" not in backbone:
            raise InputError(f"{source}: plm_backbone must be an object with a 'type' key")
        pooling = data["pooling"]
        if pooling not in ("first", "mean"):
            raise InputError(f"{source}: pooling must be 'first' or 'mean', got {pooling!r}")
        return cls(
            tied=bool(data["tied"]),
            plm_backbone_type=str(backbone["type"]),
            feature=str(backbone.get("feature", "last_hidden_state")),
            pooling=pooling,
            linear_head=bool(data["linear_head"]),
            projection_in_dim=data.get("projection_in_dim"),
            projection_out_dim=data.get("projection_out_dim"),
            normalize=bool(data["normalize"]),
            training=TrainingSettings.from_json(data),
        )
