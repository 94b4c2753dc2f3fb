"""Monte Carlo dropout: N stochastic forward passes of a Keras model folded into
compiled calls.

The model is read as a linear chain of layers (``chain``) and split before its first
active dropout layer: the prefix runs once per input row in inference mode, the suffix
once per sample with dropout on and every other layer, BatchNormalization included, in
inference mode (``engine``). Masks come from a counter-based generator (``splitmix``),
keyed per call or per input row, optionally as Latin hypercubes (``masks``); calls are
padded to row buckets and chunked to bound memory (``buckets``). The same seed gives
the same samples, bit for bit.

Shapes: ``x`` is ``[batch, *input_shape]``; ``MCEngine.sample`` returns probabilities
``[n_samples, batch, classes]``; ``sample_ragged`` one ``[n_samples_i, classes]`` array
per input row.
"""

from uncertainty.mc.engine import MCEngine, configure_tensorflow_threads
from uncertainty.mc.masks import DropoutMask
from uncertainty.mc.splitmix import random_uint16, splitmix64_numpy

__all__ = [
    "DropoutMask",
    "MCEngine",
    "configure_tensorflow_threads",
    "random_uint16",
    "splitmix64_numpy",
]
