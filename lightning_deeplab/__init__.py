"""DeepLab v2 (atrous convolution, ASPP, fully connected CRF) in PyTorch Lightning.

Subpackages: `models` (plain nn.Modules), `crf` (the dense CRF layer; needs only torch),
`data` (datasets and the DataModule); `module` holds the LightningModule and `cli` the
`deeplab` command.
"""

__version__ = "0.1.0"
