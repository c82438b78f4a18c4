"""A drop-in replacement for pydensecrf: change one word of the imports,

    import lightning_deeplab.pydensecrf.densecrf as dcrf          # was: import pydensecrf.densecrf as dcrf
    from lightning_deeplab.pydensecrf.utils import unary_from_softmax   # was: from pydensecrf.utils import ...

and a pydensecrf script runs unchanged with pydensecrf's results (the same arithmetic, on the
lattice kernels of `lightning_deeplab.crf`), multi-threaded, on the GPU with `device="cuda"`,
and for many images at once with `densecrf.inference_batch`. NumPy in, NumPy out.
"""
