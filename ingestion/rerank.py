"""Optional cross-encoder reranking of the best fused candidates.

A cross-encoder reads the question and a passage together, so it judges relevance better than the
two first-stage retrievers, at a cost of one model pass per candidate: only the ``rerank_k`` best
fused candidates are reranked. No cross-encoder ships its weights in a PyPI package, so the stage is
off unless a local sentence-transformers CrossEncoder folder is configured (for instance
``cross-encoder/ms-marco-MiniLM-L-6-v2`` or a multilingual one such as ``BAAI/bge-reranker-base``,
downloaded once by an administrator and copied to the server).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import IngestionError

__all__ = ["Reranker", "RerankerConfig", "RerankerUnavailableError"]


class RerankerUnavailableError(IngestionError):
    """The configured reranker folder cannot be loaded (searches answer 503 with this message)."""

    code = "reranker_unavailable"


@dataclass(frozen=True)
class RerankerConfig:
    #: a local folder holding a sentence-transformers CrossEncoder
    model_dir: str
    batch_size: int = 16
    #: longest question + passage pair, in the model's tokens (longer pairs are cut at the end)
    max_length: int = 512
    threads: int = 2


class Reranker:
    """A CrossEncoder loaded on first use (thread-safe); :meth:`scores` gives one score per passage."""

    def __init__(self, config: RerankerConfig) -> None:
        self.config = config
        self.name = f"cross-encoder:{Path(config.model_dir).name}"
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._model is not None:
            return self._model
        with self._lock:
            if self._model is None:
                folder = Path(self.config.model_dir).expanduser()
                if not folder.is_dir():
                    raise RerankerUnavailableError(f"The reranker folder {folder} does not exist")
                import torch
                from sentence_transformers import CrossEncoder

                torch.set_num_threads(self.config.threads)
                try:
                    model = CrossEncoder(
                        str(folder), device="cpu", max_length=self.config.max_length, local_files_only=True
                    )
                except Exception as exc:  # a folder that is not a cross-encoder: say so, do not crash searches
                    raise RerankerUnavailableError(f"The reranker in {folder} cannot be loaded: {exc}") from exc
                self._model = model
        return self._model

    def scores(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """The relevance of each passage to ``query`` (higher is better), float32."""
        if not passages:
            return np.zeros(0, dtype=np.float32)
        model = self._load()
        pairs = [(query, passage) for passage in passages]
        result = model.predict(pairs, batch_size=self.config.batch_size, show_progress_bar=False)
        return np.asarray(result, dtype=np.float32).reshape(len(passages), -1)[:, -1]
