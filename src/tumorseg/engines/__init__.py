"""Running a model: the engine table, the bundled files, the runners, loading and the measured choice of the
fastest engine on this machine (and the hardware facts it rests on). The runtime's one door to ``nn``."""
