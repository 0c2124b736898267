"""The command line: ``main`` (the console script ``tumorseg``: parsing and the runtime commands), ``args`` (the
argument types every command shares), ``predict`` (predict's printing and its PACS form) and ``train`` (the lab's
commands, which load PyTorch only when run)."""
