"""The pieces every experiment config shares: the paper's training recipe and model sections.

Each experiment file in this folder composes these and states its own model; every
value a run uses is in the resolved config it writes to its workdir.
"""

import ml_collections

# The datasets of the published table, and the offline one.
DATASETS = ('cifar10', 'cifar100', 'svhn_cropped', 'tiny_imagenet', 'digits')

# The reference's AutoAugment policy for each dataset; the offline digits go without.
AUTOAUGMENT_POLICY = {'cifar10': 'cifar10', 'cifar100': 'cifar10', 'svhn_cropped': 'svhn',
                      'tiny_imagenet': 'imagenet', 'digits': 'none'}
# Its 64x64 images make the reference scale its patch sizes so token grids match 32x32's.
TINY_IMAGENET = 'tiny_imagenet'


def mask(kind: str) -> ml_collections.ConfigDict:
  """`kind` is 'none', 'gmm' (Gaussian Mixture Mask) or 'elm' (element-wise learnable mask)."""
  return ml_collections.ConfigDict(dict(
      kind=kind,
      num_kernels=5,
      mode='multiply',  # The reference code multiplies; 'add' is the paper text's variant.
      cutoff=True,  # The float32 reference's zero beyond d2 >= 104.
  ))


def mixture_of_keys(num_keys: int = 2, variant: str = 'mgk', e_step: str = 'soft',
                    pi_per_position: bool = False,
                    learn_variance: bool = False) -> ml_collections.ConfigDict:
  """The `attention.mixture` section of score 'mixture_of_keys' (SPEC section 3, MGK).

  variant: 'mgk' (one key projection per component) or 'smgk' (one projection plus a
    learned shift per component). e_step: 'soft' (sum over components) or 'hard' (max).
  pi_per_position: mixing weights per head and key position instead of per head.
  learn_variance: learn sigma_r^2 (per head and component) from its default sqrt(d_head).
  """
  return ml_collections.ConfigDict(dict(
      num_keys=num_keys,
      variant=variant,
      e_step=e_step,
      pi_per_position=pi_per_position,
      learn_variance=learn_variance,
  ))


def attention(score: str = 'dot_product', qkv_bias: bool = False,
              mixture: ml_collections.ConfigDict | None = None,
              implementation: str = 'auto') -> ml_collections.ConfigDict:
  """`score` is 'dot_product' or 'mixture_of_keys'; only the latter has a `mixture` section.

  implementation: how the attention core runs (gmm_vit_jax/attention/core.py): 'xla',
    'blockwise', 'cudnn', or 'auto', the fastest that fits the layer and the platform.
  max_slices: the most batch slices 'blockwise' runs in turn.
  """
  config = ml_collections.ConfigDict(dict(score=score, qkv_bias=qkv_bias,
                                          implementation=implementation, max_slices=16))
  if score == 'mixture_of_keys':
    config.mixture = mixture if mixture is not None else mixture_of_keys()
  elif mixture is not None:
    raise ValueError(f"attention(mixture=...) applies to score='mixture_of_keys', not {score!r}.")
  return config


def patch_selection(kind: str = 'none', keep: float = 0.7, selection: str = 'sample',
                    mode: str = 'drop', probability: float = 0.5,
                    decay: float = 0.0) -> ml_collections.ConfigDict:
  """Training-time patch selection (SPEC section 3; gmm_vit_jax/patches). Evaluation keeps all.

  kind: patch score, 'none', 'contrast', 'entropy', 'variance' or 'random'.
  keep: fraction of the tokens kept, K = round(keep * N).
  selection: 'topk' (the K best) or 'sample' (K without replacement, probability
    proportional to the min-max normalised score).
  mode: 'drop' removes the other tokens from the sequence; 'zero' only zeroes their
    pixels, as the reference did (no compute saved: for comparison).
  probability, decay: a batch is filtered with probability p_e, where p_0 = probability
    and p_e = p_(e-1) / (1 + decay * e) at epoch e.
  selection, probability and decay default to the reference filter's own defaults.
  """
  return ml_collections.ConfigDict(dict(
      kind=kind,
      keep=keep,
      selection=selection,
      mode=mode,
      probability=probability,
      decay=decay,
  ))


def augment(dataset: str) -> ml_collections.ConfigDict:
  """SPEC section 4's augmentation; the offline digits keep only flip and crop."""
  if dataset not in AUTOAUGMENT_POLICY:
    raise ValueError(f'dataset.name={dataset!r} is not supported; choose one of {DATASETS}.')
  heavy = dataset != 'digits'
  return ml_collections.ConfigDict(dict(
      flip=True,
      crop_padding=4,
      autoaugment=AUTOAUGMENT_POLICY[dataset],
      erasing_prob=0.25 if heavy else 0.0,
      erasing_area=(0.02, 0.4),
      erasing_min_aspect=0.3,
      mix_prob=0.5 if heavy else 0.0,  # Per batch, as the reference draws it.
      cutmix_prob=0.5,
      mixup_alpha=1.0,
      cutmix_beta=1.0,
  ))


def paper_recipe(dataset: str) -> ml_collections.ConfigDict:
  """SPEC section 4: AdamW 1e-3, wd 5e-2, batch 128, 100 epochs of 3 passes, warmup 10."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.dataset = ml_collections.ConfigDict(dict(name=dataset, data_dir=None, download=True))
  config.batch_size = 128
  config.epochs = 100
  config.passes_per_epoch = 3  # The reference's repeated-augmentation sampler, 3 repeats.
  config.eval_batch_size = 500
  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-3,
      weight_decay=5e-2,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      decay_mask_params=True,  # The reference decays GMM sigma/alpha like every weight.
      grad_clip_norm=None,
  ))
  config.schedule = ml_collections.ConfigDict(dict(
      warmup_epochs=10, init_learning_rate=1e-6, end_learning_rate=1e-6))
  config.label_smoothing = 0.1
  config.augment = augment(dataset)
  config.patch_selection = patch_selection('none')
  config.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=1000, keep_last=3, keep_best=True))
  config.log_every_steps = 100
  # The console's progress line (epoch, step, images/s, loss, accuracy, ETA) at most this
  # often; TensorBoard gets the metrics every log_every_steps.
  config.progress_every_s = 3.0
  config.eval_every_epochs = 1
  # A jax.profiler trace of profile_steps steps from profile_start_step into
  # WORKDIR/profile (TensorBoard's profile tab, or Perfetto); 0 steps: no trace.
  config.profile_steps = 0
  config.profile_start_step = 10
  # On CPU-only machines, run each step on the calling thread and keep its memory mapped
  # between steps (gmm_vit_jax/cpu_runtime.py): 1.3x on GMM-ViT at batch 128 on 2 cores.
  config.cpu_keep_step_memory = True
  return config


def patch_size(dataset: str, patch_32: int) -> int:
  """The patch size for `dataset`, given the one for 32x32 images.

  Tiny-ImageNet's 64x64 images get double, as in the reference, so the token grid
  stays the same.
  """
  return 2 * patch_32 if dataset == 'tiny_imagenet' else patch_32
