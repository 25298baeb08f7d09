"""A toy dense layer for the dense-layer seam test: T5's kernel with a learned per-output scale.

This file plus its `register_dense_layer` line is all a new projection layer
needs: `network.T5Config.dense_layer = 'toy_scaled'` puts it in every attention
and MLP projection. With the scale at its initial 1 it computes what `Dense` does.
"""

from typing import Any, Callable, Sequence

import jax.numpy as jnp
from flax import linen as nn

from tkx.models import network


@network.register_dense_layer("toy_scaled")
class ScaledDense(nn.Module):
  features: int
  kernel_axes: Sequence[str]
  kernel_init: Callable = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param(
        "kernel",
        nn.with_logical_partitioning(self.kernel_init, tuple(self.kernel_axes)),
        (x.shape[-1], self.features),
        self.param_dtype,
    )
    scale = self.param(
        "output_scale",
        nn.with_logical_partitioning(
            nn.initializers.ones, self.kernel_axes[-1:]
        ),
        (self.features,),
        self.param_dtype,
    )
    y = jnp.dot(
        jnp.asarray(x, self.dtype).reshape((-1, x.shape[-1])),
        jnp.asarray(kernel, self.dtype),
    )
    return y.reshape(x.shape[:-1] + (self.features,)) * jnp.asarray(
        scale, self.dtype
    )
