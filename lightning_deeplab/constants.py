"""Values shared across the package: each lives here and nowhere else."""

#: Label value that marks pixels excluded from the loss and the metrics (VOC object borders).
IGNORE_INDEX = 255

#: Per-channel mean of the released DeepLab v2 Caffe weights, in their BGR order, 0-255 scale.
CAFFE_MEAN_BGR = (104.008, 116.669, 122.675)

#: torchvision ImageNet normalisation, RGB order, 0-1 scale.
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)

#: The colour images are padded with, per input normalisation style ("caffe": the Caffe mean,
#: "pytorch": the ImageNet mean), in RGB order, 0-255 scale: padded pixels normalise to ~0, as
#: the paper pads with the mean.
PAD_MEAN_RGB_BY_STYLE = {
    "caffe": tuple(reversed(CAFFE_MEAN_BGR)),
    "pytorch": tuple(255.0 * m for m in IMAGENET_MEAN_RGB),
}

#: The pad colour of the paper's (Caffe) normalisation, the default.
PAD_MEAN_RGB = PAD_MEAN_RGB_BY_STYLE["caffe"]
