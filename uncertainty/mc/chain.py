"""The Keras model read as a linear chain of layer applications, checked for what
the engine can sample, and its stochastic suffix with our own dropout masks.

Nested Sequential and Functional models are flattened; a layer called twice appears
twice. The engine refuses, naming the layer, what it cannot sample faithfully rather
than run it with its noise off.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import keras
import tensorflow as tf
from keras.src.models.functional import Functional

from uncertainty.mc.masks import DropoutMask, Strata, rate_refusal

_MC_LAYER_TYPES = (keras.layers.Dropout, keras.layers.AlphaDropout)  # SpatialDropout included
# The calls whose dropout the engine reproduces: a subclass that overrides call may do
# anything else with its rate.
_SAMPLED_CALLS = (
    keras.layers.Dropout.call,
    keras.layers.AlphaDropout.call,
    keras.layers.SpatialDropout1D.call,  # shared by SpatialDropout2D and 3D
)
_UNSAMPLEABLE_LAYER_TYPES = (keras.layers.GaussianNoise, keras.layers.GaussianDropout)


@dataclasses.dataclass(frozen=True)
class Link:
    """One application of a layer in the chain: a layer called twice gives two links."""

    layer: keras.layers.Layer
    output_shape: tuple[int | None, ...]  # of one row: without the batch axis


def _graph(layer: keras.layers.Layer) -> Functional | None:
    """The graph of a Sequential or Functional model, in which the engine can follow
    the layers in call order; None for other layers, a subclassed model's ``call``
    being as opaque as a custom layer's. None also for a Sequential not yet built."""
    if type(layer).call is keras.Sequential.call:
        return layer._functional
    if type(layer).call is Functional.call:
        return layer
    return None


def layer_chain(model: keras.Model) -> list[Link]:
    """The model's layer applications in call order, nested Sequential and Functional
    models flattened.

    Raises ValueError, naming the layer, when the model is not a linear chain.
    """
    graph = _graph(model)
    if graph is None:
        raise ValueError(
            f"model {model.name!r} ({type(model).__name__}) must be a built Sequential or "
            "Functional model: the engine follows their layers in call order"
        )
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ValueError(f"model {model.name!r} must have one input and one output")
    chain: list[Link] = []
    for link in _functional_chain(graph):
        chain.extend(layer_chain(link.layer) if _graph(link.layer) is not None else [link])
    return chain


def _functional_chain(model: Functional) -> list[Link]:
    """A Functional model's layer applications, input to output, when each takes the
    previous one's output. Keras keeps the model's own graph in ``_nodes_by_depth`` (a
    layer's ``input`` may belong to another model that reused it)."""
    links, previous = [], None
    for depth in sorted(model._nodes_by_depth, reverse=True):
        nodes = model._nodes_by_depth[depth]
        node = nodes[0]
        parents = node.parent_nodes
        if len(nodes) != 1 or (previous is not None and parents != [previous]):
            name = next((n.operation.name for n in nodes if n.parent_nodes != [previous]),
                        node.operation.name)
            raise ValueError(
                f"layer {name!r} does not take the previous layer's output: the engine runs "
                "linear chains of layers only"
            )
        if not isinstance(node.operation, keras.layers.InputLayer):
            links.append(Link(node.operation, tuple(node.outputs[0].shape[1:])))
        previous = node
    return links


def check_chain(chain: list[Link], model_name: str) -> None:
    """Raise ValueError, naming the layer, unless the engine can sample ``chain``."""
    for link in chain:
        reason = _refusal(link.layer)
        if reason:
            raise ValueError(f"layer {link.layer.name!r} ({type(link.layer).__name__}) {reason}")
    if not chain or not _ends_in_softmax(chain[-1].layer):
        last = chain[-1].layer.name if chain else model_name
        raise ValueError(
            f"layer {last!r} must end the model with a softmax: the engine averages "
            "probabilities"
        )
    if not any(is_active_dropout(link.layer) for link in chain):
        raise ValueError(
            f"model {model_name!r} has no active dropout to sample: no Dropout, AlphaDropout "
            "or SpatialDropout layer with a non-zero rate"
        )


def _refusal(layer: keras.layers.Layer) -> str | None:
    """Why the engine cannot run ``layer`` faithfully, or None."""
    if isinstance(layer, _MC_LAYER_TYPES):
        if type(layer).call not in _SAMPLED_CALLS:
            return (
                "overrides call: the engine samples only Keras' own dropout layers (use "
                "keras.layers.Dropout; the engine turns it on itself)"
            )
        return rate_refusal(layer.rate)
    reason = _noise_refusal(layer)
    if reason:
        return reason
    for inner in layer._flatten_layers(include_self=False):
        if is_active_dropout(inner) or _noise_refusal(inner):
            return (
                f"holds the stochastic layer {inner.name!r} ({type(inner).__name__}): the "
                "engine samples dropout layers of the model's own chain only"
            )
    return None


def _noise_refusal(layer: keras.layers.Layer) -> str | None:
    """Why ``layer``'s own noise, other than a dropout layer's, cannot be sampled, or None."""
    if isinstance(layer, _UNSAMPLEABLE_LAYER_TYPES):
        return "adds noise the engine cannot sample (use Dropout, AlphaDropout or SpatialDropout)"
    for attribute in ("dropout", "recurrent_dropout"):
        value = getattr(layer, attribute, 0)
        if isinstance(value, int | float) and value > 0:
            return f"has internal {attribute}={value}, which the engine cannot sample"
    return None


def _ends_in_softmax(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, keras.layers.Softmax) or (
        getattr(layer, "activation", None) is keras.activations.softmax
    )


def is_active_dropout(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, _MC_LAYER_TYPES) and layer.rate > 0


@dataclasses.dataclass(frozen=True)
class SuffixDropout:
    """An active dropout application of the suffix. ``key_index`` is its position among
    the suffix's dropout applications: the column of a call's keys that draws its
    masks, so that no two applications share a mask."""

    mask: DropoutMask
    key_index: int

    def __call__(
        self, h: tf.Tensor, keys: tf.Tensor, sample_index: tf.Tensor | None,
        strata: Strata | None = None,
    ) -> tf.Tensor:
        """h ``[R, ...]``, keys ``[dropout steps]``, sample_index ``[R]`` or None; strata
        with one key per dropout step ``[dropout steps]``, or None."""
        if strata is not None:
            strata = strata._replace(key=strata.key[self.key_index])
        return self.mask(h, keys[self.key_index], sample_index, strata)


SuffixStep = keras.layers.Layer | SuffixDropout


def suffix_steps(links: Sequence[Link]) -> list[SuffixStep]:
    """The suffix's layers, each active dropout application replaced by our mask."""
    steps: list[SuffixStep] = []
    n_dropout = 0
    for link in links:
        if is_active_dropout(link.layer):
            steps.append(SuffixDropout(_dropout_mask(link), key_index=n_dropout))
            n_dropout += 1
        else:
            steps.append(link.layer)
    return steps


def _dropout_mask(link: Link) -> DropoutMask:
    """Our mask for an active dropout application, with Keras' noise shape."""
    layer = link.layer
    noise_shape = _keras_noise_shape(link)
    if len(noise_shape) != len(link.output_shape) + 1 or any(
        size not in (None, 1, axis_size)
        for size, axis_size in zip(noise_shape[1:], link.output_shape, strict=True)
    ):
        # Keras fills a shorter noise_shape's Nones from the left but broadcasts it from the right
        raise ValueError(
            f"layer {layer.name!r} ({type(layer).__name__}) has noise_shape {noise_shape}; the "
            f"engine needs one entry per axis of its input {(None, *link.output_shape)}, each "
            "None, 1 or the axis's size"
        )
    return DropoutMask(
        layer_name=layer.name,
        rate=float(layer.rate),
        noise_shape=tuple(noise_shape[1:]),
        alpha=isinstance(layer, keras.layers.AlphaDropout),
        shared_by_inputs=noise_shape[0] == 1,
    )


def _keras_noise_shape(link: Link) -> tuple[int | None, ...]:
    """The layer's noise shape, batch axis first, None where the mask takes the input's size."""
    layer = link.layer
    if hasattr(layer, "_get_noise_shape"):  # SpatialDropout1D/2D/3D
        return tuple(layer._get_noise_shape(keras.KerasTensor((None, *link.output_shape))))
    if layer.noise_shape is not None:
        return tuple(layer.noise_shape)
    return (None,) * (len(link.output_shape) + 1)


def run_suffix(
    h: tf.Tensor,
    steps: Sequence[SuffixStep],
    apply_dropout: Callable[[SuffixDropout, tf.Tensor], tf.Tensor],
) -> tf.Tensor:
    """``h`` ``[R, ...]`` through ``steps``: layers in inference mode, dropout
    applications through ``apply_dropout(step, h)``."""
    for step in steps:
        if isinstance(step, SuffixDropout):
            h = apply_dropout(step, h)
        else:
            h = step(h, training=False)
    return h

