"""Pixels and files below everything else: reading and writing images (``images``), intensities (``intensity``),
orientation and voxel geometry (``geometry``), colour maps and overlays (``render``), the size limits every reader
keeps (``limits``) and atomic writes (``files``)."""
