"""Peak resident memory of one dense CRF in this process (run by benchmarks/crf.py, one
fresh process per case): `python benchmarks/crf_peak_memory.py ref|ours|cli FOLDER` reads
probs.npy [C, H, W] and image.npy [H, W, 3] uint8 from FOLDER, runs pydensecrf2 (`ref`) or
ours on one thread, and prints the peak resident MiB before and after the call. Each side
imports only what it needs (pydensecrf2 does not pay for importing torch). `cli` runs
`deeplab crf` (one thread) in a child process on the probabilities saved as float16, as
`deeplab predict` writes them, and the image as PNG, and prints 0 and that child's peak.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile

import numpy as np

# DeepLab v2 ResNet-101: pos_w, pos_xy_std, bi_w, bi_xy_std, bi_rgb_std
PARAMS = dict(pos_w=3.0, pos_xy_std=1.0, bi_w=4.0, bi_xy_std=67.0, bi_rgb_std=3.0)
ITERATIONS = 10


def run_pydensecrf(probs: np.ndarray, image: np.ndarray) -> np.ndarray:
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax as ref_unary

    classes, height, width = probs.shape
    crf = dcrf.DenseCRF2D(width, height, classes)
    crf.setUnaryEnergy(np.ascontiguousarray(ref_unary(probs)))
    crf.addPairwiseGaussian(sxy=PARAMS["pos_xy_std"], compat=PARAMS["pos_w"])
    crf.addPairwiseBilateral(sxy=PARAMS["bi_xy_std"], srgb=PARAMS["bi_rgb_std"], rgbim=image, compat=PARAMS["bi_w"])
    return np.array(crf.inference(ITERATIONS), dtype=np.float32).reshape(classes, height, width)


def peak_mib() -> float:
    """Peak resident MiB of this process image. On Linux from VmHWM: ru_maxrss carries the
    parent's peak over fork and exec, so it would count the benchmark's own inputs."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(which: str, folder: str) -> None:
    probs = np.load(os.path.join(folder, "probs.npy"))
    image = np.load(os.path.join(folder, "image.npy"))
    if which == "ref":
        import pydensecrf.densecrf  # noqa: F401  (imported before the baseline is read)

        before = peak_mib()
        run_pydensecrf(probs, image)
    elif which == "ours":
        import torch

        from lightning_deeplab.crf import dense_crf, unary_from_softmax

        torch.set_num_threads(1)
        before = peak_mib()
        unary = unary_from_softmax(torch.from_numpy(probs)[None])
        dense_crf(unary, torch.from_numpy(image).permute(2, 0, 1)[None].contiguous(), iterations=ITERATIONS, **PARAMS)
    elif which == "cli":
        from PIL import Image

        with tempfile.TemporaryDirectory() as work:
            for sub in ("probs", "images"):
                os.makedirs(os.path.join(work, sub))
            np.save(os.path.join(work, "probs", "photo.npy"), probs.astype(np.float16))
            Image.fromarray(image).save(os.path.join(work, "images", "photo.png"))
            del probs, image
            deeplab = os.path.join(os.path.dirname(sys.executable), "deeplab")
            command = [deeplab, "crf", "--probabilities", os.path.join(work, "probs"), "--images"]
            command += [os.path.join(work, "images"), "--output_dir", os.path.join(work, "out"), "--batch_size", "1"]
            env = dict(os.environ, LIGHTNING_DEEPLAB_CRF_THREADS="1")
            subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
        # ru_maxrss of the children: the deeplab process (this one holds only numpy)
        print(0.0, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
        return
    else:
        raise SystemExit(f"crf_peak_memory.py: WHICH must be 'ref', 'ours' or 'cli', got {which!r}")
    print(before, peak_mib())


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: crf_peak_memory.py ref|ours|cli FOLDER")
    main(*sys.argv[1:])
