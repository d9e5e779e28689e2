"""Experiments: the quality tables, the benchmarks and the GPU check, apart from the library.

Each one is a job (``jobs/quality_*.py``, ``jobs/bench_*.py``, ``jobs/gpu_check.py``) over a frozen
config dataclass here, and calls the library stages (``dae.prepare``, ``dae.train``, ``dae.evaluate``,
``dae.denoise``) with their config objects. The library never imports this package.

Modules:

- :mod:`.reference`: the plain single-process PyTorch loops the jobs are measured against (training,
  and a denoising script), and the shard helpers they use;
- :mod:`.reuse`: a step of an experiment run or, when its output is there, reused (prepare, train,
  evaluate), and what makes two training runs the same experiment;
- :mod:`.recipes`: the training recipes, YAML files in ``recipes/``, checked by ``TrainConfig``;
- :mod:`.natural`: the natural-photo sets prepared with their training set, and evaluate reports as
  a table;
- :mod:`.sweep`: the project's quality table (``jobs.quality_sweep``);
- :mod:`.quality_natural`, :mod:`.quality_selfsup`, :mod:`.quality_train`: the other quality tables;
- :mod:`.bench`: the training and denoising benchmarks;
- :mod:`.gpu_check`: the GPU path proven on a GPU (``jobs.gpu_check``).
"""
