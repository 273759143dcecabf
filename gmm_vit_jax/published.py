"""The published top-1 accuracies (%) of the GMM paper's results table.

Li and Zhang, "Toward a Deeper Understanding: RetNet Viewed through Convolution" (2023),
as its reference implementation reports them (docs/design.md, "Papers").

PUBLISHED[(backbone, dataset)] = (baseline, GMM).
"""

PUBLISHED = {
  ('vit', 'cifar10'): (93.65, 95.06),
  ('vit', 'cifar100'): (75.36, 77.81),
  ('vit', 'svhn_cropped'): (97.93, 98.01),
  ('vit', 'tiny_imagenet'): (59.89, 62.27),
  ('swin', 'cifar10'): (95.26, 95.39),
  ('swin', 'cifar100'): (77.88, 78.26),
  ('swin', 'svhn_cropped'): (97.89, 97.90),
  ('swin', 'tiny_imagenet'): (60.45, 61.03),
  ('cait', 'cifar10'): (94.79, 95.15),
  ('cait', 'cifar100'): (78.42, 78.97),
  ('cait', 'svhn_cropped'): (98.13, 98.09),
  ('cait', 'tiny_imagenet'): (62.46, 63.64),
  ('pit', 'cifar10'): (93.68, 94.41),
  ('pit', 'cifar100'): (72.82, 74.16),
  ('pit', 'svhn_cropped'): (97.78, 97.82),
  ('pit', 'tiny_imagenet'): (57.63, 58.37),
  ('t2t', 'cifar10'): (95.32, 96.16),
  ('t2t', 'cifar100'): (78.10, 79.91),
  ('t2t', 'svhn_cropped'): (97.99, 97.98),
  ('t2t', 'tiny_imagenet'): (61.50, 63.33),
}
BACKBONES = ('vit', 'swin', 'cait', 'pit', 't2t')
DATASETS = ('cifar10', 'cifar100', 'svhn_cropped', 'tiny_imagenet')
