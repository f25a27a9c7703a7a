"""``DRModelConfig``: the architecture of a dense-retrieval model, stored as ``openmatch_config.json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from ..errors import InputError

# Backbone classes whose representation comes from the decoder's first position (fed the start token).
DECODER_BACKBONES = ("T5Model", "MT5Model", "UMT5Model")
# Encoder-only classes of the T5 family (for --encoder_only).
T5_ENCODER_BACKBONES = ("T5EncoderModel", "MT5EncoderModel", "UMT5EncoderModel")

OPENMATCH_KEYS = ("tied", "plm_backbone", "pooling", "linear_head", "normalize")


@dataclass
class DRModelConfig:
    """Architecture of a bi-encoder: backbone class, pooling, head, normalisation and loss temperature.

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
    temperature: float = 1.0
    encoder_only: bool = True

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

    def to_openmatch_json(self) -> dict[str, Any]:
        """The ``openmatch_config.json`` content: OpenMatch's keys first, then ours."""
        return {
            "tied": self.tied,
            "plm_backbone": {"type": self.plm_backbone_type, "feature": self.feature},
            "pooling": self.pooling,
            "linear_head": self.linear_head,
            "normalize": self.normalize,
            "projection_in_dim": self.projection_in_dim,
            "projection_out_dim": self.projection_out_dim,
            "temperature": self.temperature,
            "encoder_only": self.encoder_only,
        }

    def encoding_json(self) -> dict[str, Any]:
        """The fields that decide what a text's embedding is: everything but training-only settings.

        Indexes record this, so a query encoder is checked against the index's model without tripping
        over the loss temperature, which never changes an embedding.
        """
        config = self.to_openmatch_json()
        config.pop("temperature", None)
        return config

    @classmethod
    def from_openmatch_json(cls, data: dict[str, Any], source: str = "openmatch_config.json") -> "DRModelConfig":
        """Read our or OpenMatch's ``openmatch_config.json`` (OpenMatch's lacks the extra keys)."""
        missing = [key for key in OPENMATCH_KEYS if key not in data]
        if missing:
            raise InputError(f"{source}: missing key(s) {', '.join(missing)}")
        backbone = data["plm_backbone"]
        if not isinstance(backbone, dict) or "type" not in backbone:
            raise InputError(f"{source}: plm_backbone must be an object with a 'type' key")
        backbone_type = str(backbone["type"])
        pooling = data["pooling"]
        if pooling not in ("first", "mean"):
            raise InputError(f"{source}: pooling must be 'first' or 'mean', got {pooling!r}")
        return cls(
            tied=bool(data["tied"]),
            plm_backbone_type=backbone_type,
            feature=str(backbone.get("feature", "last_hidden_state")),
            pooling=pooling,
            linear_head=bool(data["linear_head"]),
            projection_in_dim=data.get("projection_in_dim"),
            projection_out_dim=data.get("projection_out_dim"),
            normalize=bool(data["normalize"]),
            temperature=float(data.get("temperature", 1.0)),
            # OpenMatch does not store encoder_only: the backbone class says it.
            encoder_only=bool(data.get("encoder_only", backbone_type not in DECODER_BACKBONES)),
        )
