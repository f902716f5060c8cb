"""The encodability gate cannot be fooled by memorisation (docs/method.md, "The shortcut test", question "Is it encoded?").

A multitask model trained long enough on few images memorises a pure-noise column (``bmi`` is never rendered) through
its trained head: on the *training* images the column looks predictable, because the backbone saw them. Measured on
validation images the backbone never trained on, the probe is at chance and the gate says no.
"""

from __future__ import annotations

import pytest

from wsca_lightning.cli.train import train

MEMORISE = [
    "data.num_train=96",
    "data.num_val=160",
    "data.image_size=[16,32]",
    "data.batch_size=16",
    "data.metadata.spacing=null",
    "data.metadata.cervical_length=null",
    "data.metadata.hospital=null",
    "data.metadata.bmi.bins=2",
    "model.optimizer.lr=0.003",
    "trainer.max_epochs=40",
    "+trainer.check_val_every_n_epoch=40",
    "+trainer.num_sanity_val_steps=0",
    "callbacks.wsc.subset_size=96",
    "callbacks.wsc.every_n_epochs=40",
    "callbacks.wsc.num_permutations=20",
    "callbacks.wsc.num_bootstrap=100",
    "callbacks.wsc.save_plots=false",
]


@pytest.mark.slow
def test_a_memorised_noise_column_is_not_interpretable_on_validation_data(tiny_config):
    result = train(tiny_config(*MEMORISE))
    # the model did memorise bmi: its trained head predicts the (never rendered) column on the training images
    assert result["metrics"]["train/bmi/auroc"] > 0.75, result["metrics"]
    bmi = result["summary"]["tasks"]["bmi"]
    # ... and the gate, measured on validation images the backbone never saw, says the column is not encoded
    assert bmi["probe"]["split"] == "validation"
    assert bmi["interpretable"] is False, bmi["probe"]
    assert bmi["probe"]["auroc_ci"][0] <= 0.5
