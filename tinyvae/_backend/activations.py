"""The one table of activation names and the integer codes the compiled kernels branch on.

Strings are slow to compare in nopython loops, so the kernels take a code; the
code of a name is its position here. Pure Python: kernels.py imports it without
pulling in Numba.
"""

ACTIVATIONS = ("identity", "relu", "leaky_relu", "tanh", "sigmoid", "softplus")
ACTIVATION_CODES = {name: code for code, name in enumerate(ACTIVATIONS)}
