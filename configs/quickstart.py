"""GMM-ViT on scikit-learn's bundled handwritten digits: offline, on a CPU, in a minute or two.

    python train.py --config=configs/quickstart.py --workdir=runs/quickstart

A 4-layer GMM-ViT on the 8x8 digits (2x2 patches: a 4x4 token grid), trained on 1,437
images and evaluated on the 360 held out (a fixed stratified split).
"""

import ml_collections

from gmm_vit_jax import configs_common as common


def get_config(arg: str = 'digits') -> ml_collections.ConfigDict:
  config = common.paper_recipe(arg)
  config.batch_size = 64
  config.eval_batch_size = 360
  config.epochs = 60
  config.passes_per_epoch = 1
  config.schedule.warmup_epochs = 6
  config.label_smoothing = 0.1
  # Digits are not mirror-symmetric: no flips; a 1-pixel shift on an 8x8 image.
  config.augment.flip = False
  config.augment.crop_padding = 1
  config.checkpoint.every_steps = 200
  config.log_every_steps = 50
  # Ten evals, one console line each; the best checkpoint is chosen among them.
  config.eval_every_epochs = 6
  # Its whole run takes under a minute: a progress line every 2 s shows it move, and no
  # more than 20 of them keep its console under 40 lines on a slower machine too.
  config.progress_every_s = 2.0
  config.progress_max_lines = 20
  # Its steps take milliseconds and fault in little memory: inline dispatch costs more
  # than it saves (1,619 to 1,890 images/s off against 1,435 to 1,563 on, three pairs).
  config.cpu_keep_step_memory = False
  config.model = ml_collections.ConfigDict(
    dict(
      name='vit',
      patch_size=2,
      dim=64,
      depth=4,
      num_heads=4,
      head_dim=16,
      mlp_ratio=2,
      pool='mean',
      dropout=0.0,
      emb_dropout=0.0,
      stochastic_depth=0.1,
      # A CPU demo, not a table run: 'auto' is float32 there (bfloat16 on GPUs and TPUs).
      dtype='auto',
      attention=common.attention(),
      mask=common.mask('gmm'),
    )
  )
  return config
