"""The experiment config files; the pieces they share are gmm_vit_jax.configs_common.

`configs.common` names that module too, so `from configs import common` keeps working.
"""

import sys

from gmm_vit_jax import configs_common as common

sys.modules[f'{__name__}.common'] = common
