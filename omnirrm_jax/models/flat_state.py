"""Weights flattened once, for jitted programs that take the same weights call after call.

A jitted call flattens its arguments on every call, and an `nnx.State` flattens node by node in Python: the frozen
weights of a 36-layer thinker took milliseconds of host time per call on the 2-core development CPU, time in which
a GPU waits between the programs of a GRPO step. `FlatState` holds the leaves as one tuple, which jit walks in C++,
and the structure as aux data, which jit compares but does not walk; `unflat` gives the State back inside the
program. Pass it where the weights do not change between calls (a LoRA run's base
weights); weights that every step replaces gain nothing, they would be flattened to build it.
"""

from __future__ import annotations

from typing import Any

import jax


@jax.tree_util.register_pytree_node_class
class FlatState:
    """A pytree's leaves (a tuple) and structure (`jax.tree_util.PyTreeDef`); a pytree itself, with those leaves."""

    __slots__ = ("leaves", "treedef")

    def __init__(self, leaves: tuple, treedef):
        self.leaves, self.treedef = leaves, treedef

    @classmethod
    def of(cls, tree: Any) -> "FlatState":
        leaves, treedef = jax.tree.flatten(tree)
        return cls(tuple(leaves), treedef)

    def unflat(self) -> Any:
        return jax.tree.unflatten(self.treedef, self.leaves)

    def tree_flatten(self):
        return self.leaves, self.treedef

    @classmethod
    def tree_unflatten(cls, treedef, leaves) -> "FlatState":
        return cls(tuple(leaves), treedef)


def unflat(x: Any) -> Any:
    """`x` itself, or the tree a `FlatState` holds."""
    return x.unflat() if isinstance(x, FlatState) else x
