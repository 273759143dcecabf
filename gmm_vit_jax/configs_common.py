"""The pieces every experiment config shares: the paper's training recipe and model sections.

Each experiment file in the repository's configs/ composes these and states its own model,
and so can a config file of your own, wherever it lives:

    from gmm_vit_jax import configs_common as common
    config = common.paper_recipe('cifar10')

Every value a run uses is in the resolved config it writes to its workdir.
"""

import ml_collections
from ml_collections import config_dict

# The datasets of the published table, the offline one, ImageNet (configs/*_imagenet.py),
# and the user's own: a folder of images (docs/own_images.md), or any tfds dataset as
# 'tfds:NAME'.
DATASETS = (
  'cifar10',
  'cifar100',
  'svhn_cropped',
  'tiny_imagenet',
  'digits',
  'imagenet2012',
  'image_folder',
)

# The reference's AutoAugment policy for each dataset; the offline digits go without.
# Photographs of the user's own take ImageNet's.
AUTOAUGMENT_POLICY = {
  'cifar10': 'cifar10',
  'cifar100': 'cifar10',
  'svhn_cropped': 'svhn',
  'tiny_imagenet': 'imagenet',
  'digits': 'none',
  'imagenet2012': 'imagenet',
  'image_folder': 'imagenet',
}
# Its 64x64 images make the reference scale its patch sizes so token grids match 32x32's.
TINY_IMAGENET = 'tiny_imagenet'

# What the paper-table configs compute in: float32, as the reference trained. On a GPU or
# TPU, bfloat16 would round the q.k logits to 8 bits of mantissa before a GMM mask of up
# to ~10 multiplies them, a blur of the size of the table's 0.01-0.4 point GMM-vs-plain
# gaps, and the plain models could take the fused cuDNN kernel while the multiplicative
# GMM cannot, so the two columns would not share numerics. The switch:
# --config.model.dtype=bfloat16, or 'auto' (bfloat16 on GPUs and TPUs, float32 on CPUs).
PAPER_DTYPE = 'float32'


def mask(kind: str) -> ml_collections.ConfigDict:
  """`kind` is 'none', 'gmm' (Gaussian Mixture Mask) or 'elm' (element-wise learnable mask)."""
  return ml_collections.ConfigDict(
    dict(
      kind=kind,
      num_kernels=5,
      mode='multiply',  # The reference code multiplies; 'add' is the paper text's variant.
      cutoff=True,  # The float32 reference's zero beyond d2 >= 104.
    )
  )


def mixture_of_keys(
  num_keys: int = 2,
  variant: str = 'mgk',
  e_step: str = 'soft',
  pi: str = 'e_step',
  pi_scope: str = 'position',
  learn_variance: bool = False,
) -> ml_collections.ConfigDict:
  """The `attention.mixture` section of score 'mixture_of_keys' (MGK: Nguyen et al.,
  'Improving Transformers with Probabilistic Attention Keys', ICML 2022).

  variant: 'mgk' (one key projection per component) or 'smgk' (one projection plus a
    learned shift per component).
  e_step: 'soft' (pi-weighted sum over components) or 'hard' (max over components).
  pi: where the mixing weights come from. 'e_step': the paper's soft E-step, a
    non-trainable state set each training batch to the mean responsibilities and used
    as is at evaluation (needs e_step='soft'); 'learned': softmax-normalised logits
    learned by SGD, a different variant; 'none': no mixing weights, with e_step='hard'
    the paper's hard E-step.
  pi_scope: 'position': mixing weights per head and key position, pi of shape
    (heads, keys, positions), as the MGK paper and its code keep them; 'head': one set
    per head, pooled over the key positions.
  learn_variance: learn sigma_r^2 (per head and component) from its default sqrt(d_head).
  """
  return ml_collections.ConfigDict(
    dict(
      num_keys=num_keys,
      variant=variant,
      e_step=e_step,
      pi=pi,
      pi_scope=pi_scope,
      learn_variance=learn_variance,
    )
  )


def attention(
  score: str = 'dot_product',
  qkv_bias: bool = False,
  mixture: ml_collections.ConfigDict | None = None,
  implementation: str = 'auto',
) -> ml_collections.ConfigDict:
  """`score` is 'dot_product' or 'mixture_of_keys'; only the latter has a `mixture` section.

  implementation: how the attention core runs (gmm_vit_jax/attention/core.py): 'xla',
    'blockwise', 'cudnn', or 'auto', the fastest that fits the layer and the platform.
  max_slices: the most batch slices 'blockwise' runs in turn.
  """
  config = ml_collections.ConfigDict(
    dict(score=score, qkv_bias=qkv_bias, implementation=implementation, max_slices=16)
  )
  if score == 'mixture_of_keys':
    config.mixture = mixture if mixture is not None else mixture_of_keys()
  elif mixture is not None:
    raise ValueError(f"attention(mixture=...) applies to score='mixture_of_keys', not {score!r}.")
  return config


def patch_selection(
  kind: str = 'none',
  keep: float = 0.7,
  selection: str = 'sample',
  mode: str = 'drop',
  probability: float = 0.5,
  decay: float = 0.0,
  entropy_bins: int = 256,
) -> ml_collections.ConfigDict:
  """Training-time patch selection (docs/design.md; gmm_vit_jax/patches). Evaluation keeps all.

  kind: patch score, 'none', 'contrast', 'entropy', 'variance' or 'random'.
  keep: fraction of the tokens kept, K = round(keep * N).
  selection: 'topk' (the K best) or 'sample' (K without replacement, probability
    proportional to the min-max normalised score).
  mode: 'drop' removes the other tokens from the sequence; 'zero' only zeroes their
    pixels, as the reference did (no compute saved: for comparison).
  probability, decay: a batch is filtered with probability p_e, where p_0 = probability
    and p_e = p_(e-1) / (1 + decay * e) at epoch e.
  selection, probability and decay default to the reference filter's own defaults.
  entropy_bins: bins over [0, 1] of the entropy score's per-patch intensity histogram
    (channels pooled); 256, one per level of an 8-bit image, counts intensity values
    as the GMM-HViT write-up's p_i = count(i) / N does.
  """
  return ml_collections.ConfigDict(
    dict(
      kind=kind,
      keep=keep,
      selection=selection,
      mode=mode,
      probability=probability,
      decay=decay,
      entropy_bins=entropy_bins,
    )
  )


def augment(dataset: str) -> ml_collections.ConfigDict:
  """The recipe's augmentation (docs/design.md); the offline digits keep only flip and crop."""
  policy = 'imagenet' if dataset.startswith('tfds:') else AUTOAUGMENT_POLICY.get(dataset)
  if policy is None:
    raise ValueError(
      f"dataset.name={dataset!r} is not supported; choose one of {DATASETS} or 'tfds:NAME'."
    )
  heavy = dataset != 'digits'
  return ml_collections.ConfigDict(
    dict(
      # The Inception crop (imagenet_recipe): a box of a uniform area fraction in crop_scale
      # and a log-uniform width / height in crop_ratio, resized back to the image's size.
      inception_crop=False,
      crop_scale=(0.08, 1.0),
      crop_ratio=(3 / 4, 4 / 3),
      flip=True,
      crop_padding=4,
      autoaugment=policy,
      # RandAugment (imagenet_recipe): ops per image (0: off), each taken with probability
      # 0.5 at a level 0-10 drawn around the magnitude with the given standard deviation.
      randaugment_ops=0,
      randaugment_magnitude=9.0,
      randaugment_magnitude_std=0.5,
      erasing_prob=0.25 if heavy else 0.0,
      erasing_area=(0.02, 0.4),
      erasing_min_aspect=0.3,
      mix_prob=0.5 if heavy else 0.0,  # Per batch, as the reference draws it.
      cutmix_prob=0.5,
      mixup_alpha=1.0,
      cutmix_beta=1.0,
    )
  )


def paper_recipe(dataset: str) -> ml_collections.ConfigDict:
  """The paper's recipe (docs/design.md): AdamW 1e-3, wd 5e-2, batch 128, 100 epochs of 3
  passes, warmup 10."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  # validation: a fraction of the train split held out (stratified, seeded) to choose the
  # best checkpoint on; None keeps the reference's choice on the test split (optimistic).
  # Fields that default to None are typed placeholders, so a flag can set them.
  # pipeline: 'device' (both splits resident on every device), 'grain' (streamed from the
  # host) or 'auto' (resident when both splits fit resident_share of one device's memory);
  # gmm_vit_jax/data/pipeline.py. grain_workers: grain's worker processes (0: read in this
  # process with grain_threads threads); prefetch: batches read and placed ahead.
  # The dataset's facts (gmm_vit_jax/data/info.py), None for the dataset's own: image_size
  # (image folders need it; images are resized to it), channels (1 grey, 3 RGB; image
  # folders: 3), class_names, mean and std (per channel, pixels in [0, 1]), background
  # ('dark' or 'light'). For image folders and 'tfds:NAME' the trainer reads the ones left
  # None from the data and stores them in the run's config; so does validation_split, the
  # name of a labelled validation split the data holds (an image folder's validation/ or
  # val/), which takes the place of a dataset.validation hold-out.
  config.dataset = ml_collections.ConfigDict(
    dict(
      name=dataset,
      data_dir=config_dict.placeholder(str),
      download=True,
      validation=config_dict.placeholder(float),
      pipeline='device',
      resident_share=0.5,
      grain_workers=0,
      grain_threads=4,
      prefetch=2,
      image_size=config_dict.placeholder(int),
      channels=config_dict.placeholder(int),
      class_names=config_dict.placeholder(tuple),
      mean=config_dict.placeholder(tuple),
      std=config_dict.placeholder(tuple),
      background=config_dict.placeholder(str),
      validation_split=config_dict.placeholder(str),
    )
  )
  config.batch_size = 128
  config.epochs = 100
  config.passes_per_epoch = 3  # The reference's repeated-augmentation sampler, 3 repeats.
  config.eval_batch_size = 500
  config.optimizer = ml_collections.ConfigDict(
    dict(
      learning_rate=1e-3,
      weight_decay=5e-2,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      decay_mask_params=True,  # The reference decays GMM sigma/alpha like every weight.
      grad_clip_norm=config_dict.placeholder(float),  # None: no clipping.
      # Layer-wise learning-rate decay, for fine-tuning: layer l of a backbone of L blocks
      # (embedding 0, head L + 1) learns at learning_rate * layer_decay**(L + 1 - l);
      # gmm_vit_jax/training/optimizer.py numbers each backbone's layers. 1.0: off.
      layer_decay=1.0,
    )
  )
  config.schedule = ml_collections.ConfigDict(
    dict(warmup_epochs=10, init_learning_rate=1e-6, end_learning_rate=1e-6)
  )
  # Train steps (micro-batches of batch_size) whose averaged gradients make one update:
  # the effective batch is batch_size * grad_accum_steps (optax.MultiSteps).
  config.grad_accum_steps = 1
  # Decay of an exponential moving average of the weights, evaluated beside them
  # (eval_ema_*); None or 0: none kept.
  config.ema_decay = config_dict.placeholder(float)
  # Fine-tuning: the initial weights from a run workdir, an export bundle or a reference
  # .pth (gmm_vit_jax/training/init_from.py); None: a fresh initialisation.
  config.init_from = config_dict.placeholder(str)
  # Regular expressions of parameter names (e.g. 'head\\..*') that init_from leaves fresh.
  config.init_from_dont_load = ()
  # init_from is refused when it would fill under half the model's parameter values (another
  # backbone or width); True loads whatever fits and leaves the rest fresh.
  config.init_from_partial = False
  config.label_smoothing = 0.1
  config.augment = augment(dataset)
  config.patch_selection = patch_selection('none')
  config.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep_last=3, keep_best=True))
  config.log_every_steps = 100
  # The console's progress line (epoch, step, images/s, loss, accuracy, ETA) at most this
  # often; TensorBoard gets the metrics every log_every_steps.
  config.progress_every_s = 3.0
  # And at most this many progress lines in the whole run (0: no limit), spread over it.
  config.progress_max_lines = 0
  config.eval_every_epochs = 1
  # A jax.profiler trace of profile_steps steps from profile_start_step into
  # WORKDIR/profile (TensorBoard's profile tab, or Perfetto); 0 steps: no trace.
  config.profile_steps = 0
  config.profile_start_step = 10
  # On CPU-only machines, run each step on the calling thread and keep its memory mapped
  # between steps (gmm_vit_jax/cpu_runtime.py): 1.3x on GMM-ViT at batch 128 on 2 cores.
  config.cpu_keep_step_memory = True
  return config


def imagenet_recipe() -> ml_collections.ConfigDict:
  """The ImageNet-1k recipe at 224x224 that HAT-Net and the DeiT line of ViTs train with:
  AdamW lr 5e-4 per 512 images (1e-3 at batch 1024), weight decay 0.05, 300 epochs with 5
  of warmup, label smoothing 0.1, random erasing 0.25, Mixup 0.8 / CutMix 1.0 on every
  batch, stochastic depth in the model, and DeiT's augmentation: the Inception crop
  (area 8-100%, width / height 3/4-4/3, bicubic), flip, and RandAugment with 2 ops at
  magnitude 9 with noise 0.5 (timm's rand-m9-mstd0.5-inc1). One departure, the device
  augmentation's: the crop is taken from the stored centre-cropped 224x224 image rather
  than from the full photograph, so it never reaches beyond that square. Streamed by
  grain unless both splits fit (dataset.pipeline='auto'); the best checkpoint is chosen on a 1%
  validation hold-out, since ImageNet's labelled 'validation' split is the test set."""
  config = paper_recipe('imagenet2012')
  config.dataset.pipeline = 'auto'
  config.dataset.validation = 0.01
  config.dataset.download = False  # ImageNet needs its manual download (docs/datasets.md).
  config.dataset.grain_workers = 16
  config.dataset.grain_threads = 16
  config.dataset.prefetch = 4
  config.batch_size = 1024
  config.eval_batch_size = 1000
  config.epochs = 300
  config.passes_per_epoch = 1
  config.optimizer.learning_rate = 1e-3
  config.schedule.warmup_epochs = 5
  config.augment.update(
    dict(
      inception_crop=True,
      crop_padding=0,
      autoaugment='none',
      randaugment_ops=2,
      mix_prob=1.0,
      cutmix_prob=0.5,
      mixup_alpha=0.8,
      cutmix_beta=1.0,
    )
  )
  config.checkpoint.every_steps = 2000
  config.log_every_steps = 200
  return config


def patch_size(dataset: str, patch_32: int) -> int:
  """The patch size for `dataset`, given the one for 32x32 images.

  Tiny-ImageNet's 64x64 images get double, as in the reference, so the token grid
  stays the same.
  """
  return 2 * patch_32 if dataset == 'tiny_imagenet' else patch_32
