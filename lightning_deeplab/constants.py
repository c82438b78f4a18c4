"""Values shared across the package: each lives here and nowhere else."""

#: Label value that marks pixels excluded from the loss and the metrics (VOC object borders).
IGNORE_INDEX = 255

#: Per-channel mean of the released DeepLab v2 Caffe weights, in their BGR order, 0-255 scale.
CAFFE_MEAN_BGR = (104.008, 116.669, 122.675)

#: torchvision ImageNet normalisation, RGB order, 0-1 scale.
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)

#: The value of every channel of a padded pixel in an image batch (RGB 0-255 images never hold
#: it). The network's input normalisation turns such pixels into 0, its mean colour, as the paper
#: pads with the mean: padding is marked where the data pads and filled where the normalisation
#: lives, so the data need not know the network's normalisation.
PAD_VALUE = -1.0
