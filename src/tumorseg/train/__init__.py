"""The training lab (the train extra): data, augmentation, losses, the Trainer, evaluation, robustness,
cross-validation, export. Nothing in the runtime imports it."""
