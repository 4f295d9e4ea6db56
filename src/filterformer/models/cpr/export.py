"""CPR's export plan: a query graph, global retrieval in NumPy, a local-retrieval graph.

- graph ``query``: images -> the trained descriptors at both scales (``fine``, ``coarse``),
  the global-retrieval ``words`` (nearest codebook centre of each fine-scale feature) and, for
  objects, the image's ``foreground`` map;
- step ``retrieve`` (NumPy, float64, as the model): block histograms of the words, trimmed KL
  to every reference's histograms, the ``top_k`` nearest references (``neighbours``);
- steps ``gather``: those references' float16 descriptors and foreground maps from the bank;
- graph ``local``: windowed minimum cosine distance to the K references per scale, the scales
  summed, the foreground weight, then the run's fusion, smoothing and image score.

The bank (every reference's float16 descriptors at both scales, their word histograms and
foreground maps) is stored beside the graphs as one file. The parity check compares the
retrieved references with the torch model's as well as the maps.
"""

from __future__ import annotations

import torch
from torch import nn

from filterformer.models.cpr.local import windowed_min_distance
from filterformer.models.cpr.model import CPR
from filterformer.models.cpr.retrieval import KL_EPS, nearest_centre
from filterformer.models.export_plan import IMAGES, MAPS, SCORES, ExportPlan, Graph, Step


class QueryGraph(nn.Module):
    """images -> (fine, coarse descriptors, words[, foreground])."""

    def __init__(self, model: CPR) -> None:
        super().__init__()
        references = model.references
        self.model = model
        self.register_buffer("codebook", references.codebook.float().clone())
        self.foreground = references.foreground

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.model.backbone(images)
        fine, coarse = self.model.descriptors(features)
        out = (fine, coarse, nearest_centre(features[0], self.codebook))
        if self.foreground is not None:
            out += (self.foreground(features[0]),)
        return out


class LocalGraph(nn.Module):
    """(fine, coarse, ref_fine, ref_coarse[, foreground, ref_foreground]) -> (maps, scores)."""

    def __init__(self, model: CPR, finish: nn.Module, size: tuple[int, int]) -> None:
        super().__init__()
        self.model, self.finish, self.size = model, finish, size

    def forward(
        self,
        fine: torch.Tensor,
        coarse: torch.Tensor,
        ref_fine: torch.Tensor,
        ref_coarse: torch.Tensor,
        foreground: torch.Tensor | None = None,
        ref_foreground: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = zip((fine, coarse), (ref_fine, ref_coarse), self.model.windows, strict=True)
        distances = [windowed_min_distance(q, r, w) for q, r, w in pairs]
        amap = self.model.combine(distances, self.size, foreground, ref_foreground)
        return self.finish({"cpr": amap})


def cpr_export_plan(model: CPR, finish: nn.Module) -> ExportPlan:
    """The plan of a CPR model with its references set (a loaded run)."""
    references = model._require_references()
    settings = model.settings
    scales = model.memory_bank().scales
    arrays = {
        "fine": scales[0].cpu().numpy(),
        "coarse": scales[1].cpu().numpy(),
        "histograms": references.histograms.float().numpy(),
    }
    retrieve = {
        "num_words": settings.num_words,
        "blocks": settings.blocks,
        "kept": settings.kept_blocks,
        "top_k": settings.top_k,
        "eps": KL_EPS,
    }
    steps = [
        Step("retrieve", ("words",), ("neighbours",), {"histograms": "histograms"}, retrieve),
        Step("gather", ("neighbours",), ("ref_fine",), {"table": "fine"}),
        Step("gather", ("neighbours",), ("ref_coarse",), {"table": "coarse"}),
    ]
    query = ("fine", "coarse", "words")
    local = ("fine", "coarse", "ref_fine", "ref_coarse")
    if references.foreground is not None:
        arrays["foreground"] = references.foreground_maps.float().numpy()
        steps.append(Step("gather", ("neighbours",), ("ref_foreground",), {"table": "foreground"}))
        query, local = (*query, "foreground"), (*local, "foreground", "ref_foreground")
    size = tuple(references.images.shape[-2:])

    def checks(images: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {"neighbours": model.retrieve(model.backbone(images)[0])}

    return ExportPlan(
        (
            Graph("query", QueryGraph(model), (IMAGES,), query),
            *steps,
            Graph("local", LocalGraph(model, finish, size), local, (MAPS, SCORES)),
        ),
        arrays,
        any_size=False,
        checks=checks,
    )
