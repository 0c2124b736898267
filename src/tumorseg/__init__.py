"""tumorseg: brain-tumour segmentation in MRI with a ResNet50 U-Net, for CPUs.

Research use only. Not a medical device.
"""

from .version import __version__

__all__ = ["Predictor", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import tumorseg` stays light for the CLI and the data tools.
    if name == "Predictor":
        from .inference import Predictor

        return Predictor
    raise AttributeError(name)
