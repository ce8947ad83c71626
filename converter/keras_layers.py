"""From Keras layer counts (the seed paper's 27/27/36/53/14) to TFLite cut points.

The TFLite converter fuses layers (a convolution absorbs its BatchNormalization and ReLU) and
drops others (Dropout, InputLayer), so "after Keras layer 27" is not an operator position by
itself. But it keeps the Keras name scopes in the fused tensor names, e.g.
``functional_1/block_2_add_1/Add`` or ``.../block_1_expand_relu_1/Relu6;.../block_1_expand_1/
convolution``. Keras 3 appends ``_<n>`` to each scope, which is stripped before matching.

So each operator is credited with the Keras layers its output names mention (an operator that
mentions none, such as a trailing SOFTMAX or a QUANTIZE, belongs to the layer of the operator
before it). After operator p, the first `layers_done(p)` layers are complete: every operator
crediting any of them is at or before p. Layers no operator mentions (folded or identity
layers) are complete as soon as the layers before them are.

A requested cumulative count c maps to the first valid cut point p with layers_done(p) >= c:
the nearest clean cut at or after that layer. It is exact when layers_done(p) == c.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

from aiotedge_converter.errors import ConverterError
from aiotedge_converter.metadata import KerasLayer

from aiotedge.tflite.graph import Graph

_SCOPE_SUFFIX = re.compile(r"_\d+$")


@dataclass(frozen=True)
class LayerCut:
    """Where one requested layer boundary landed."""

    requested: int  # cumulative Keras layer count asked for
    op_index: int  # the cut point used
    layers: int  # Keras layers complete at that cut

    @property
    def exact(self) -> bool:
        return self.layers == self.requested


def _layer_of_scope(scope: str, index_of: dict[str, int]) -> int | None:
    # Keras 3 suffixes every scope (layer "re_lu" runs as "re_lu_1", layer "re_lu_1" as
    # "re_lu_1_2"), so the stripped name is tried first.
    stripped = _SCOPE_SUFFIX.sub("", scope)
    if stripped in index_of:
        return index_of[stripped]
    return index_of.get(scope)


def _mentioned(name: str, index_of: dict[str, int]) -> set[int]:
    """Indices of the Keras layers whose scopes appear in a (fused) tensor name.

    In each ``;``-separated location the first scope naming a layer is the layer; what
    follows it names TF ops inside the layer (``batchnorm/add_1`` is no Keras "add" layer),
    what precedes it names enclosing models.
    """
    found = set()
    for part in name.split(";"):
        for scope in part.split("/"):
            index = _layer_of_scope(scope, index_of)
            if index is not None:
                found.add(index)
                break
    return found


def layers_done(graph: Graph, layers: Sequence[KerasLayer]) -> list[int]:
    """For each operator p, how many leading Keras layers are complete after it."""
    index_of: dict[str, int] = {}
    for index, layer in enumerate(layers):
        index_of.setdefault(layer.name, index)
    last_op = [-1] * len(layers)
    owner = 0
    for op in graph.ops:
        if op.index in graph.weight_ops:  # a weight's DEQUANTIZE runs early, named after its user
            continue
        names = [graph.tensor(t).name for t in op.outputs]
        mentioned = set().union(*(_mentioned(n, index_of) for n in names))
        if mentioned:
            owner = max(mentioned)
        for index in mentioned | {owner}:
            last_op[index] = op.index
    done = []
    for p in range(len(graph.ops)):
        count = 0
        while count < len(layers) and last_op[count] <= p:
            count += 1
        done.append(count)
    return done


def parse_layer_counts(text: str) -> list[int]:
    """'27,27,36,53,14' -> [27, 27, 36, 53, 14], each a positive layer count."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or any(c <= 0 for c in counts):
        raise ConverterError(f"layers: expects positive layer counts like 27,27,36,53,14: {text!r}")
    return counts


def cuts_for_layer_counts(
    graph: Graph, layers: Sequence[KerasLayer], counts: Sequence[int]
) -> list[LayerCut]:
    """The cut point for each boundary between consecutive layer groups (len(counts)-1 cuts)."""
    if not layers:
        raise ConverterError(
            "--strategy layers: needs the Keras layer list, which `aiotedge-convert import` "
            "records from a .keras or .h5 model (not from a SavedModel or another .tflite)"
        )
    if sum(counts) != len(layers):
        raise ConverterError(
            f"layer counts {','.join(map(str, counts))} add up to {sum(counts)}, "
            f"the Keras model has {len(layers)} layers"
        )
    done = layers_done(graph, layers)
    points = [c.op_index for c in graph.cut_points]
    cuts: list[LayerCut] = []
    for requested in list(accumulate(counts))[:-1]:
        chosen = next((p for p in points if done[p] >= requested), None)
        if chosen is None:
            raise ConverterError(f"no cut point after Keras layer {requested}")
        if cuts and chosen == cuts[-1].op_index:
            raise ConverterError(
                f"Keras layers {cuts[-1].requested} and {requested} both map to the cut after "
                f"op {chosen}: no clean cut between them"
            )
        cuts.append(LayerCut(requested, chosen, done[chosen]))
    return cuts
