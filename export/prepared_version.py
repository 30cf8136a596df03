"""A verified zoo export held in memory until it is written (export/model_version.py hands it to
export/writer.py, export/model_card.py describes it)."""

from __future__ import annotations

from dataclasses import dataclass

from export.exporter import OnnxGraph
from export.model_stats import ParameterCount
from export.models.registry import ModelSpec
from export.parity import ParityReport
from service.config import ModelConfig


@dataclass(frozen=True)
class PreparedVersion:
    """A verified export waiting to be written; `weights` describes where the weights came from."""

    spec: ModelSpec
    config: ModelConfig
    graph: OnnxGraph
    parity: ParityReport
    parameters: ParameterCount
    macs: int
    labels: tuple[str, ...] | None
    weights: dict
