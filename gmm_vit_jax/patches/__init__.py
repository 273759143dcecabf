"""The patch heuristic: score every patch of an image, keep the best fraction of tokens.

Entry points for a trainer (cfg is the config's `patch_selection` section, see
gmm_vit_jax/configs_common.py `patch_selection`):
  application_probability(cfg, epoch) -> float, on the host: filter this batch or not.
  select_tokens(images, key, cfg, *, patch_size) -> (B, K) token_index, inside the
    jitted step; images are floats in [0, 1]. Mode 'drop' passes token_index to the
    model, which removes the other tokens; mode 'zero' passes
    zero_dropped_patches(images, token_index, patch_size=...) and no token_index.
Evaluation keeps every patch. draw_kept_patches pictures a selection.
"""

from gmm_vit_jax.patches.schedule import application_probability
from gmm_vit_jax.patches.scores import patch_scores
from gmm_vit_jax.patches.selection import select_tokens, zero_dropped_patches
from gmm_vit_jax.patches.visualize import draw_kept_patches
