"""Mesh construction and logical-to-mesh shardings.

Model code only names logical axes; the rules mapping them to mesh axes live in the config as a
list of `(logical, mesh_axis_or_axes_or_None)` pairs. The mesh comes from the config as ordered
`(name, size)` pairs with one `-1` filled from the device count. Axes are `Auto` (GSPMD), since
jax 0.10's `jax.make_mesh` defaults to Explicit axes.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec


def make_mesh(axes: Sequence[tuple[str, int]], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `devices` (default all) from ordered `(name, size)` pairs; one size may be -1."""
    devices = list(devices if devices is not None else jax.devices())
    names = [str(a) for a, _ in axes]
    sizes = [int(s) for _, s in axes]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh {list(axes)}: at most one axis may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh {list(axes)}: {len(devices)} devices not divisible by {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(
            f"mesh {dict(zip(names, sizes, strict=True))} needs {int(np.prod(sizes))} devices, "
            f"have {len(devices)}"
        )
    grid = np.asarray(devices).reshape(sizes)
    return Mesh(grid, tuple(names), axis_types=(AxisType.Auto,) * len(names))


def _axis_size(mesh: Mesh, axis) -> int:
    if axis is None:
        return 1
    axes = axis if isinstance(axis, tuple) else (axis,)
    return int(np.prod([mesh.shape[a] for a in axes]))


def spec_for(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules) -> PartitionSpec:
    """PartitionSpec for one array; a dimension its mesh axes do not divide stays replicated."""
    spec = nn.logical_to_mesh_axes(tuple(names), rules)
    fixed = []
    for dim, axis in zip(shape, spec, strict=True):
        if axis is not None and dim % _axis_size(mesh, axis):
            logging.log_first_n(
                logging.WARNING,
                "dim %d not divisible by mesh axis %s; replicating it",
                8,
                dim,
                axis,
            )
            axis = None
        fixed.append(axis)
    return PartitionSpec(*fixed)


def param_shardings(boxed_abstract, mesh: Mesh, rules) -> dict:
    """NamedShardings for a params tree of `nn.LogicallyPartitioned` abstract leaves."""
    flat = flatten_dict(boxed_abstract, sep="/")
    out = {}
    for path, leaf in flat.items():
        if isinstance(leaf, nn.LogicallyPartitioned):
            spec = spec_for(leaf.names, leaf.value.shape, mesh, rules)
        else:
            spec = PartitionSpec()
        out[path] = NamedSharding(mesh, spec)
    return unflatten_dict(out, sep="/")


def batch_sharding(mesh: Mesh, rules, ndim: int) -> NamedSharding:
    """Shard the leading (batch) dimension as `act_batch`, the rest replicated."""
    spec = nn.logical_to_mesh_axes(("act_batch",) + (None,) * (ndim - 1), rules)
    return NamedSharding(mesh, PartitionSpec(*spec))


def data_parallel_size(mesh: Mesh, rules) -> int:
    """How many ways the batch is split; global batch sizes must be a multiple of it."""
    return _axis_size(mesh, nn.logical_to_mesh_axes(("act_batch",), rules)[0])


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def put(tree, shardings):
    """Place a host (numpy) tree onto devices with matching shardings."""
    return jax.tree.map(lambda x, s: jax.device_put(x, s), tree, shardings)
