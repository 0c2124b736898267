"""What the model takes, gives and can judge: its contract and file header (``info``), the input it is fed
(``preprocess``), the mask made from its map (``postprocess``), whether an image is one it can judge
(``input_checks``) and the metrics it is judged by (``metrics``). No PyTorch, no engine."""
