"""Test inputs for the dense CRF: real photos shipped with scikit-image, DeepLab-like noisy
class probabilities, and the pydensecrf2 reference called the way DeepLab ports call it."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: (pos_w, pos_xy_std, bi_w, bi_xy_std, bi_rgb_std)
DEEPLAB_RESNET = (3.0, 1.0, 4.0, 67.0, 3.0)
DEEPLAB_VGG = (2.0, 2.0, 4.0, 65.0, 3.0)
WIDE_KERNELS = (3.0, 3.0, 10.0, 80.0, 13.0)


def photo(name: str, height: int, width: int) -> np.ndarray:
    """A scikit-image photo as a writable C-contiguous uint8 [H, W, 3] array: cropped when
    it is large enough, else resized (bilinear) to the requested size."""
    import skimage.data

    image = getattr(skimage.data, name)()
    if image.shape[0] >= height and image.shape[1] >= width:
        return np.ascontiguousarray(image[:height, :width, :3])
    tensor = torch.from_numpy(np.ascontiguousarray(image[..., :3])).permute(2, 0, 1)[None].float()
    resized = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)
    return np.ascontiguousarray(resized[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy())


def image_tensor(*photos: np.ndarray) -> torch.Tensor:
    """[B, 3, H, W] uint8 batch of [H, W, 3] photos."""
    return torch.stack([torch.from_numpy(p).permute(2, 0, 1) for p in photos])


def noisy_probs(batch: int, classes: int, height: int, width: int, seed: int) -> torch.Tensor:
    """DeepLab-like softmax output [B, C, H, W]: a random label map at 1/8 resolution,
    upsampled bilinearly as one-hot scores, plus Gaussian noise, softmaxed."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, classes, (batch, (height + 7) // 8, (width + 7) // 8), generator=gen)
    scores = F.one_hot(coarse, classes).permute(0, 3, 1, 2).float() * 4.0
    scores = F.interpolate(scores, size=(height, width), mode="bilinear", align_corners=False)
    scores = scores + 1.5 * torch.randn(batch, classes, height, width, generator=gen)
    return torch.softmax(scores, dim=1)


def densecrf_constant(module, name: str):
    """A kernel or normalisation constant of a pydensecrf module (pydensecrf2's or ours) by
    name. pydensecrf2 built with Cython >= 3.3 keeps its cpdef enum members on the enum
    classes only (`NormalizationType.NORMALIZE_SYMMETRIC`), not as module attributes."""
    if hasattr(module, name):
        return getattr(module, name)
    for enum_type in (module.NormalizationType, module.KernelType):
        if hasattr(enum_type, name):
            return getattr(enum_type, name)
    raise AttributeError(f"{module.__name__} has no constant {name}")


def pydensecrf_marginals(
    probs: np.ndarray,
    image: np.ndarray,
    params=DEEPLAB_RESNET,
    iterations: int = 10,
    normalization: str = "symmetric",
    compat_matrix: np.ndarray | None = None,
) -> np.ndarray:
    """pydensecrf2's marginals [C, H, W] for probs [C, H, W] and image [H, W, 3] uint8, set
    up as DeepLab does: unary_from_softmax, addPairwiseGaussian, addPairwiseBilateral.
    With compat_matrix X both kernels get compat = -w * X (our compatibility X)."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    pos_w, pos_xy, bi_w, bi_xy, bi_rgb = params
    classes, height, width = probs.shape
    norm = densecrf_constant(dcrf, {"symmetric": "NORMALIZE_SYMMETRIC", "after": "NORMALIZE_AFTER"}[normalization])
    crf = dcrf.DenseCRF2D(width, height, classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    pos_compat = pos_w if compat_matrix is None else np.ascontiguousarray(-pos_w * compat_matrix, dtype=np.float32)
    bi_compat = bi_w if compat_matrix is None else np.ascontiguousarray(-bi_w * compat_matrix, dtype=np.float32)
    crf.addPairwiseGaussian(sxy=pos_xy, compat=pos_compat, normalization=norm)
    crf.addPairwiseBilateral(sxy=bi_xy, srgb=bi_rgb, rgbim=image, compat=bi_compat, normalization=norm)
    return np.array(crf.inference(iterations), dtype=np.float32).reshape(classes, height, width)


#: Corruptions of a lattice of 2 x 500 pixels (d = 5) that the filters must refuse:
#: name -> (table, flat index, value, the error's words).
CORRUPTIONS = {
    "offsets": ("offsets", 17, 10**6, "offsets holds a vertex index outside"),
    "negative offset": ("offsets", 3, -1, "offsets holds a vertex index outside"),
    "neighbors": ("neighbors", 40, -2, "neighbors holds an index outside"),
    "splat_pixel": ("splat_pixel", 5, 2000, "splat_pixel holds a pixel index outside"),
    "splat_ptr end": ("splat_ptr", -1, 1, "splat_ptr does not end at"),
    "splat_ptr order": ("splat_ptr", 10, 0, "splat_ptr is not strictly increasing"),
}


def corrupted_tables(lattice, table: str, index: int, value: int) -> list[torch.Tensor]:
    """The six filter tables of `lattice` with a copy of `table` holding `value` at `index`."""
    tables = list(lattice.filter_tables)
    field = lattice._fields.index(table)
    tables[field] = tables[field].clone()
    tables[field].view(-1)[index] = value
    return tables
