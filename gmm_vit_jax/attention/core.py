"""The attention core, softmax(mask(q . k * scale) + bias) @ v, in three implementations.

Shapes: B batch, H heads, N queries, M keys, D head width. q (B, H, N, D), k and v
(B, H, M, D); the result is (B, H, N, D).

- 'xla' writes every (B, H, N, M) array out and keeps the softmax for the backward
  pass; it runs any score function and any logit hook (attention/attention.py).
- 'blockwise' runs the batch in slices under jax.checkpoint: the (B, H, N, M) logits
  and weights exist one slice at a time and the backward pass recomputes them instead
  of storing them. The multiplicative GMM mask cannot be an attention bias, so this is
  its fused path; on a CPU the slice stays in cache (benchmarks/levers.py).
- 'cudnn' is jax.nn.dot_product_attention's fused cuDNN kernel: GPU only, bfloat16 or
  float16, head width a multiple of 8, and the mask, if any, additive (a bias).

'auto' takes the fastest one that supports the layer on this platform.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from gmm_vit_jax import platforms
from gmm_vit_jax.attention.masks import MaskMode, MaskValues, apply_mask
from gmm_vit_jax.errors import check_choice

IMPLEMENTATIONS = ('auto', 'xla', 'blockwise', 'cudnn')

# On a CPU, a layer with this many keys or fewer (Swin's 4x4 windows, PiT's last stage)
# runs the core faster materialised: its slices' products are too small for the
# recomputation to pay (forward and backward of the core alone, about 2x; the GMM-Swin
# training step, 1.07x to 1.12x; docs/cpu_speed.md).
SHORT_KEYS = 32

LogitsFn = Callable[[jax.Array], jax.Array]


def dot_product_logits(q: jax.Array, k: jax.Array, scale: float) -> jax.Array:
  """(B, H, N, D), (B, H, M, D) -> (B, H, N, M) logits q . k * scale."""
  return jnp.einsum('bhid,bhjd->bhij', q, k) * jnp.asarray(scale, q.dtype)


def masked_logits(logits: jax.Array, mask: MaskValues | None, bias: jax.Array | None) -> jax.Array:
  """(B, H, N, M) logits -> float32 logits with the mask applied and the bias added."""
  logits = logits.astype(jnp.float32)
  if mask is not None:
    logits = apply_mask(logits, mask.values, mask.valid, mask.mode)
  if bias is not None:
    logits = logits + bias
  return logits


def reference_attention(
  q,
  k,
  v,
  *,
  scale: float,
  mask: MaskValues | None = None,
  bias: jax.Array | None = None,
  pre_softmax: LogitsFn | None = None,
  post_softmax: LogitsFn | None = None,
) -> jax.Array:
  """The 'xla' core: every (B, H, N, M) array materialised.

  pre_softmax, post_softmax: per-example maps of (B, H, N, M) logits and weights (CaiT's
  talking heads), applied after the mask and bias and after the softmax.
  """
  logits = masked_logits(dot_product_logits(q, k, scale), mask, bias)
  if pre_softmax is not None:
    logits = pre_softmax(logits)
  weights = jax.nn.softmax(logits, axis=-1)
  if post_softmax is not None:
    weights = post_softmax(weights)
  return jnp.einsum('bhij,bhjd->bhid', weights.astype(v.dtype), v)


def num_slices(batch: int, max_slices: int) -> int:
  """The largest divisor of `batch` that is at most `max_slices`."""
  return max(n for n in range(1, min(batch, max_slices) + 1) if batch % n == 0)


def blockwise_attention(
  q,
  k,
  v,
  *,
  scale: float,
  mask: MaskValues | None = None,
  bias: jax.Array | None = None,
  pre_softmax: LogitsFn | None = None,
  post_softmax: LogitsFn | None = None,
  max_slices: int,
) -> jax.Array:
  """The 'blockwise' core: `num_slices(B / G, max_slices)` sequential batch slices.

  The batch is G = jax.device_count() groups of consecutive examples (one group per
  device under the trainer's batch-sharded mesh; one group if G does not divide B),
  and slice s takes the s-th run of B / (G S) examples from every group. Splitting so
  costs no copy: on one device a slice is a contiguous run, and on G devices every
  device works on its own examples in every slice. Heads stay where the projections
  put them, (B, N, H, D), until inside a slice, so the only head transposes are of
  slices that sit in cache. Per-example mask values, valid pairs and biases (leading
  dimension B) are sliced with the tokens; shared ones are closed over, and their
  gradients summed over slices, as are the parameters of the logit maps.
  """
  batch = q.shape[0]
  groups = jax.device_count() if batch % jax.device_count() == 0 else 1
  slices = num_slices(batch // groups, max_slices)
  run = batch // (groups * slices)

  def per_example(x):
    return x is not None and x.ndim == 4 and x.shape[0] == batch and batch > 1

  # The size-1 group axis must not reach the loop: XLA:CPU copies a swap of it.
  def split(x):
    """(B, ...) -> (S, B / S, ...)."""
    x = x.reshape(groups, slices, run, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1).reshape(slices, groups * run, *x.shape[3:])

  def merge(x):
    """(S, B / S, ...) -> (B, ...)."""
    x = x.reshape(slices, groups, run, *x.shape[2:])
    return jnp.swapaxes(x, 0, 1).reshape(batch, *x.shape[3:])

  heads_last = lambda x: jnp.swapaxes(x, 1, 2)
  mask_sliced = mask is not None and per_example(mask.values)
  bias_sliced = per_example(bias)
  sliced = dict(q=heads_last(q), k=heads_last(k), v=heads_last(v))
  if mask_sliced:
    sliced['values'] = mask.values
    sliced['valid'] = (
      mask.valid
      if mask.valid.ndim == 3
      else jnp.broadcast_to(mask.valid, (batch,) + mask.valid.shape)
    )
  if bias_sliced:
    sliced['bias'] = bias

  @jax.checkpoint
  def one_slice(part):
    part_mask = mask
    if mask_sliced:
      part_mask = MaskValues(part['values'], part['valid'], mask.mode)
    out = reference_attention(
      heads_last(part['q']),
      heads_last(part['k']),
      heads_last(part['v']),
      scale=scale,
      mask=part_mask,
      bias=part['bias'] if bias_sliced else bias,
      pre_softmax=pre_softmax,
      post_softmax=post_softmax,
    )
    return heads_last(out)

  return heads_last(merge(jax.lax.map(one_slice, jax.tree.map(split, sliced))))


def cudnn_attention(
  q,
  k,
  v,
  *,
  scale: float,
  mask: MaskValues | None = None,
  bias: jax.Array | None = None,
  implementation: str = 'cudnn',
) -> jax.Array:
  """The 'cudnn' core through jax.nn.dot_product_attention; an additive mask joins the bias.

  `implementation` is that function's own argument: tests pass 'xla' to check this
  wrapper's layout and bias handling on a CPU.
  """
  if mask is not None:
    if mask.mode != 'add':
      raise ValueError(
        "model.attention.implementation='cudnn' takes an additive mask only "
        "(model.mask.mode='add'); use 'blockwise' for 'multiply'."
      )
    valid = mask.valid if mask.valid.ndim == 2 else mask.valid[:, None]
    mask_bias = jnp.where(valid, mask.values.astype(jnp.float32), 0.0)
    bias = mask_bias if bias is None else bias + mask_bias
  if bias is not None:
    bias = jnp.broadcast_to(
      bias, (bias.shape[0] if bias.ndim == 4 else 1,) + q.shape[1:3] + k.shape[2:3]
    ).astype(q.dtype)
  to_bnhd = lambda x: jnp.swapaxes(x, 1, 2)
  out = jax.nn.dot_product_attention(
    to_bnhd(q), to_bnhd(k), to_bnhd(v), bias=bias, scale=scale, implementation=implementation
  )
  return to_bnhd(out)


def cudnn_supports(
  *, dtype, head_dim: int, mask_mode: MaskMode | None, lengths: tuple[int, ...] = ()
) -> str | None:
  """None when the cuDNN kernel can run the layer, else why not.

  lengths: the query and key sequence lengths. cuDNN trains with a bias on even lengths
  only, and JAX's training rule always passes one (an empty array when there is none):
  jax 0.10.2's check_is_flash_attention refuses ViT's 65 tokens (64 patches and CLS)
  even without a mask, which a lowering for CUDA shows (gmm_vit_jax/lower.py).
  """
  if platforms.backend() != 'gpu':
    return f'it needs a GPU, and the backend is {platforms.backend()!r}'
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return f'it needs bfloat16 or float16, and model.dtype is {jnp.dtype(dtype).name}'
  if head_dim % 8:
    return f'it needs a head width that is a multiple of 8, and it is {head_dim}'
  if mask_mode not in (None, 'add'):
    return f'it takes an additive mask only, and model.mask.mode is {mask_mode!r}'
  if any(n % 2 for n in lengths):
    return f'in training it needs even sequence lengths, and they are {lengths}'
  return None


def resolve_implementation(
  requested: str,
  *,
  dot_product: bool,
  logit_maps: bool,
  dtype,
  head_dim: int,
  mask_mode: MaskMode | None,
  lengths: tuple[int, ...] = (),
) -> str:
  """The implementation a layer runs: `requested`, or for 'auto' this platform's best.

  dot_product: the scores are q . k (not a mixture of keys), which 'blockwise' and
    'cudnn' require.
  logit_maps: the layer maps logits or weights around the softmax (talking heads),
    which 'cudnn' cannot.
  lengths: see cudnn_supports.
  'auto' is 'cudnn' on a GPU where it applies; on a CPU 'blockwise', or 'xla' where
  there are at most SHORT_KEYS keys; and 'xla' otherwise: on TPUs XLA fuses the softmax
  itself. The platform is the one traced for (gmm_vit_jax/platforms.py).
  """
  check_choice('model.attention.implementation', requested, IMPLEMENTATIONS)
  cudnn_problem = cudnn_supports(
    dtype=dtype, head_dim=head_dim, mask_mode=mask_mode, lengths=lengths
  )
  if logit_maps and cudnn_problem is None:
    cudnn_problem = 'it has no place for talking heads'
  if requested == 'auto':
    if not dot_product:
      return 'xla'
    if cudnn_problem is None:
      return 'cudnn'
    if not platforms.on_cpu() or (lengths and lengths[-1] <= SHORT_KEYS):
      return 'xla'
    return 'blockwise'
  if requested != 'xla' and not dot_product:
    raise ValueError(
      f'model.attention.implementation={requested!r} needs dot-product scores; '
      "use 'xla' or 'auto' for mixture-of-keys attention."
    )
  if requested == 'cudnn' and cudnn_problem is not None:
    raise ValueError(f"model.attention.implementation='cudnn' cannot run here: {cudnn_problem}.")
  return requested


def attend(
  q,
  k,
  v,
  *,
  implementation: str,
  scale: float,
  mask: MaskValues | None,
  bias: jax.Array | None,
  pre_softmax: LogitsFn | None = None,
  post_softmax: LogitsFn | None = None,
  max_slices: int,
) -> jax.Array:
  """Runs a resolved implementation (resolve_implementation) of the core.

  A symbolic batch (jax.export) cannot be sliced: 'blockwise' then runs as 'xla'.
  """
  maps = dict(pre_softmax=pre_softmax, post_softmax=post_softmax)
  if implementation == 'blockwise' and isinstance(q.shape[0], int):
    return blockwise_attention(
      q, k, v, scale=scale, mask=mask, bias=bias, max_slices=max_slices, **maps
    )
  if implementation == 'cudnn':
    if pre_softmax is not None or post_softmax is not None:
      raise ValueError('the cuDNN core has no place for talking heads.')
    return cudnn_attention(q, k, v, scale=scale, mask=mask, bias=bias)
  return reference_attention(q, k, v, scale=scale, mask=mask, bias=bias, **maps)
