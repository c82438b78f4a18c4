"""The names of the `deeplab` commands, their modules and one-line descriptions: read by the
dispatcher (:mod:`.main`) and by the LightningCLI's help (:mod:`.cli`). Imports nothing."""

from __future__ import annotations

#: The Trainer's commands, run by the LightningCLI: name -> one-line description.
TRAINER_COMMANDS: dict[str, str] = {
    "fit": "train (and validate) a model; --ckpt_path resumes a run",
    "validate": "score a checkpoint on the validation split",
    "test": "score a checkpoint on the test split",
    "predict": "write label maps (and overlays) for a folder or split",
}

#: Commands handled outside LightningCLI: name -> (module with a `main(argv)`, description).
EXTRA_COMMANDS: dict[str, tuple[str, str]] = {
    "crf-search": (
        "lightning_deeplab.commands.crf_search",
        "grid search of the CRF's bi_w, bi_xy_std, bi_rgb_std on val",
    ),
    "crf": (
        "lightning_deeplab.commands.crf_refine",
        "refine saved probabilities or logits of any model with the dense CRF",
    ),
    "convert-caffe": ("lightning_deeplab.caffe.convert", "convert a released DeepLab .caffemodel to a checkpoint"),
    "build-kernels": (
        "lightning_deeplab.commands.build_kernels",
        "compile the CRF kernels ahead of time (else done on first use)",
    ),
}


def command_list() -> list[str]:
    """One line per command, name and description (the command's help and the CLI's)."""
    summaries = {**TRAINER_COMMANDS, **{name: summary for name, (_, summary) in EXTRA_COMMANDS.items()}}
    return [f"  {name:<14} {summary}" for name, summary in summaries.items()]
