"""The network (needs the train extra: PyTorch): the U-Net, its export form, the model-file format,
combinations of model files and int8 quantisation. The runtime reaches it only for the torch engines."""
