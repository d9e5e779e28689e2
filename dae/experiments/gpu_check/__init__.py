"""The logic of ``python -m jobs.gpu_check`` (its docstring has the commands): the GPU path proven on a GPU.

Everything it uses is made on the spot (only the checkout travels to the GPU machine): synthetic
images with structure (smooth random fields, disks and rectangles, a fine texture), written as shards
with ``dae.shards.ShardWriter`` into ``--work`` (a temp dir, removed at the end unless given). Steps:

  1. versions: Python, torch, CUDA, cuDNN, Ray, pyarrow, the GPU's name (torch and nvidia-smi);
  2. train: ``dae.train.run(TrainConfig(...))`` trains the U-Net (width 32) with 1 GPU worker for 2
     epochs (--precision auto: bf16 autocast + channels_last on a CUDA device, dae.precision) on 50,000 28x28
     RGB images; the same model, data, noise, batch, Adam + one-cycle and bf16 in a plain PyTorch
     loop in this process. Target: the job's steady (last) epoch >= 0.9x the plain loop's images/s
     (both timed the same way: the epoch's training loop, validation and checkpoints excluded);
  3. denoise: ``dae.denoise.run(DenoiseConfig(...))`` with the ``denoise-gpu`` preset (1 GPU actor)
     on the 50,000 small images and on 1,000 481x321 RGB photos, against a plain single-process GPU
     script (read, decode, forward, encode, write Parquet) with the same forward settings. Reported:
     images/s, GPU utilization sampled every 500 ms by ``nvidia-smi ... -lms 500`` during the run,
     and the CPU time of decode (``dae.inference.prepare_batch``), encode (``finish_batch``) and the
     Parquet write, timed IN-PROCESS on one sample batch (single thread): with the task CPUs they
     give the CPU stages' ceiling, and the plain script's forward time the GPU's, so the figures say
     which one bounds the job. Targets: job >= 2x the plain script, GPU >= 60% busy (mean over the
     active span: first to last non-zero sample), or the figures showing which CPU stage bounds it;
  4. agreement: denoise outputs with 1 and 2 GPU actors (0.5 GPU each) within one 8-bit level
     (``read_outputs`` tables, ``denoised`` PNGs decoded, on a subset of each set); tiled vs whole-image
     inference (``dae.inference.denoise_images``, tile 96 / overlap 24 vs one huge tile) within the
     tolerances of tests/unit/test_denoise.py (max < 0.01, mean < 2e-4), in fp32 and in bf16
     (bf16 on a CPU too where it has AMX-BF16/AVX512-BF16).

Output: the figures on stdout and in ``OUT/gpu_check.json`` (written after every step, so a run cut
short still leaves what it measured); ``"skipped"`` lists what did not run and why. ``--device cpu
--small`` runs every step at tiny sizes on CPU (1 epoch, 1 and 2 CPU actors), skipping only what needs
a GPU (nvidia-smi, bf16). Exit status: 0 when every step ran and the agreement checks hold (speed
targets are figures: met or missed, they do not change it), 1 otherwise, 2 when ``--device cuda`` is
asked and no GPU is visible (one line on stderr).

Modules: :mod:`.config` (the job's config, sizes, targets), :mod:`.data` (the synthetic sets),
:mod:`.probes` (versions, GPU utilization), :mod:`.measure` (each measurement: the jobs, the plain
loop and script of :mod:`dae.experiments.reference`, the CPU stages, agreement), :mod:`.check` (the
steps, gpu_check.json, the figures).
"""

from .check import run
from .config import GpuCheckConfig

__all__ = ["GpuCheckConfig", "run"]
