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
POOLINGS = ("first", "mean", "last")


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
class Instructions:
    """Token ids the model puts in front of every query / passage it encodes (``--query_prefix``, ``--passage_prefix``).

    They are inserted after the first ``offset`` tokens of the tokenised text (the tokenizer's leading special
    tokens, e.g. Llama's ``<s>``), by the model itself, so that every caller (training, validation, build_index,
    retrieve, the API) encodes with them. The texts are kept beside the ids for people and for conflict checks.
    """

    query: str = ""
    passage: str = ""
    query_ids: list[int] = field(default_factory=list)
    passage_ids: list[int] = field(default_factory=list)
    offset: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"query": self.query, "passage": self.passage, "query_ids": list(self.query_ids),
                "passage_ids": list(self.passage_ids), "offset": self.offset}

    @classmethod
    def from_json(cls, data: Any, source: str) -> "Instructions":
        if not isinstance(data, dict):
            raise InputError(f"{source}: instructions must be an object")
        ids = {}
        for key in ("query_ids", "passage_ids"):
            value = data.get(key, [])
            if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value):
                raise InputError(f"{source}: instructions.{key} must be a list of token ids")
            ids[key] = value
        offset = data.get("offset", 0)
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise InputError(f"{source}: instructions.offset must be a non-negative integer, got {offset!r}")
        return cls(query=str(data.get("query", "")), passage=str(data.get("passage", "")), offset=offset, **ids)


@dataclass
class LoraSettings:
    """A LoRA checkpoint's adapter settings and the frozen base it was trained on.

    ``base_model`` is the base's folder (or Hugging Face name) and ``base_fingerprint`` a hash of its weights
    (:func:`openmatch.modeling.lora.weights_fingerprint`), so that an adapter is never put on another base.
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    target_modules: list[str] | str = "all-linear"
    base_model: str = ""
    base_fingerprint: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any, source: str) -> "LoraSettings":
        if not isinstance(data, dict):
            raise InputError(f"{source}: lora must be an object")
        missing = [key for key in ("r", "alpha", "target_modules", "base_model", "base_fingerprint") if key not in data]
        if missing:
            raise InputError(f"{source}: lora is missing key(s) {', '.join(missing)}")
        return cls(
            r=int(data["r"]), alpha=int(data["alpha"]), dropout=float(data.get("dropout", 0.0)),
            target_modules=data["target_modules"], base_model=str(data["base_model"]),
            base_fingerprint=str(data["base_fingerprint"]),
        )


@dataclass
class DRModelConfig:
    """The encoder of a bi-encoder (backbone class, pooling, head, normalisation), plus its ``training`` settings.

    ``to_openmatch_json`` writes OpenMatch v2's ``openmatch_config.json`` schema (``tied``,
    ``plm_backbone.{type,feature}``, ``pooling``, ``linear_head``, ``normalize``) plus our extra keys, so
    OpenMatch can read our tied checkpoints and we can read all of OpenMatch's. ``instructions`` (query/passage
    prefixes) and ``lora`` (a LoRA checkpoint's adapter and base) are written only when set.
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
    instructions: Optional[Instructions] = None
    lora: Optional[LoraSettings] = None

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
        data = {
            "tied": self.tied,
            "plm_backbone": {"type": self.plm_backbone_type, "feature": self.feature},
            "pooling": self.pooling,
            "linear_head": self.linear_head,
            "normalize": self.normalize,
            "projection_in_dim": self.projection_in_dim,
            "projection_out_dim": self.projection_out_dim,
        }
        # Only when set, so that the files (and index records) of models without instructions stay as they were.
        if self.instructions is not None:
            data["instructions"] = self.instructions.to_json()
        return data

    def to_openmatch_json(self) -> dict[str, Any]:
        """The ``openmatch_config.json`` content: the encoder, the training settings, then the LoRA adapter's.

        ``lora`` is left out of :meth:`encoding_json`: how the weights are stored (adapter or merged) does not
        change an embedding, and the index's weight fingerprint already tells models apart.
        """
        data = {**self._encoder_json(), **self.training.to_json()}
        if self.lora is not None:
            data["lora"] = self.lora.to_json()
        return data

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
        if pooling not in POOLINGS:
            raise InputError(f"{source}: pooling must be 'first', 'mean' or 'last', got {pooling!r}")
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
            instructions=Instructions.from_json(data["instructions"], source) if data.get("instructions") else None,
            lora=LoraSettings.from_json(data["lora"], source) if data.get("lora") else None,
        )
