"""DeepLab v2 (atrous convolution, ASPP, fully connected CRF) in PyTorch Lightning.

From the bottom up: `crf` (the dense CRF layer over the C++/CUDA operators; needs only torch),
`models` (the networks, plain nn.Modules), `data` (readers, augmentation, the DataModule),
`evaluation` (the inference protocol and the scores), `runs` (a run on disk: its folder,
checkpoints, logger), `training` (the LightningModule), `callbacks` (what a run reports and
writes), `commands` (the `deeplab` command; ``python -m lightning_deeplab`` is the same).
`pydensecrf` is a drop-in for pydensecrf's API and `caffe` reads the released Caffe weights.
"""

__version__ = "0.1.0"
