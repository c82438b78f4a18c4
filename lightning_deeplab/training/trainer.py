"""The Trainer of the `deeplab` command: Lightning's, with batch counts that stay counts.

Lightning annotates ``limit_{train,val,test,predict}_batches`` as ``Union[float, int]``, and
jsonargparse tries a union's types in order: ``--trainer.limit_val_batches 1`` (or ``1`` in a
YAML file) became ``1.0``, i.e. all batches. Here ``int`` comes first: ``1`` is one batch, ``1.0``
all of them, ``0.25`` a quarter. (``val_check_interval`` already lists ``int`` first.)

The annotations are written ``int | float | None``: ``typing.Union[int, float]`` would not do,
as typing caches unions as equal whatever their order and hands back Lightning's.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

#: The Trainer's arguments that are a batch count (int) or a fraction of the batches (float).
BATCH_LIMITS = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches")


class DeepLabTrainer(pl.Trainer):
    """:class:`pytorch_lightning.Trainer` whose batch limits read an integer as a count."""

    def __init__(
        self,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        limit_test_batches: int | float | None = None,
        limit_predict_batches: int | float | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            limit_train_batches: training batches per epoch: a count (int) or a fraction (float).
                Default: all (1.0).
            limit_val_batches: validation batches per validation: a count (int) or a fraction
                (float). Default: all (1.0).
            limit_test_batches: test batches: a count (int) or a fraction (float). Default: all (1.0).
            limit_predict_batches: prediction batches: a count (int) or a fraction (float).
                Default: all (1.0).
            **kwargs: the other arguments of :class:`pytorch_lightning.Trainer`.
        """
        given = {
            "limit_train_batches": limit_train_batches,
            "limit_val_batches": limit_val_batches,
            "limit_test_batches": limit_test_batches,
            "limit_predict_batches": limit_predict_batches,
        }
        # unset ones are left out, so Lightning's defaults (and PL_TRAINER_* variables) apply
        super().__init__(**{key: value for key, value in given.items() if value is not None}, **kwargs)
