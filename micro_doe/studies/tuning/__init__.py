"""Tuning a Micro3Diff model's own sampling settings (``micro-doe tune MODEL``).

A model trained on a user's micrographs samples best with settings that depend on its
morphology (the anchored variant, n_h, S, the decoding, the vf calibration). This package finds
them with the platform itself, in four stages, a module each (:mod:`.options` holds the search
space and the options they share, :mod:`.tuner` runs them, :mod:`.card` writes the record):

1. **Held-out reference** (:mod:`.held_out`). The judges compare with images the network never
   saw: the bundle's ``held_out.nc`` (training set them aside), or images given here
   (``held_out_data``), whose descriptors are then written into the bundle.
2. **vf calibration** (:mod:`.calibration`): the anchored variant at a probe setting, anchored
   at 0.75, 1 and 1.25 times the training vf; the measured vf against the anchored one is the
   bundle's ``vf_calibration`` (used by settings with ``calibrate: true``). Measured once per
   key (setting, volumes, seed, weights) and kept in the bundle and the study.
3. **A real study** (:mod:`.search`, run by :class:`~micro_doe.studies.runner.Study`: Ray
   actors, Optuna storage, MLflow). It searches variant (paper, anchored, and spectral when the
   bundle records its training images' autocovariance: :func:`.options.variants`), n_h, S,
   decoding, calibration and precision; it starts from the paper's algorithm and the settings
   that served the shipped models (:func:`.options.starts`), then TPE; the last ``walk_share``
   of the budget walks from the best setting so far, one knob at a time
   (:func:`.search.next_step`: n_h a rung up or down the ladder first, then calibration, S,
   precision and decoding), because n_h matters most and a short TPE run rarely visits the
   ladder of its best variant. Objectives: ``structure_error`` (L + size + diameter +
   connectivity error against the held-out images: descriptors no setting steers) and
   ``seconds_per_volume``. vf is a constraint (within 25 % of the held-out vf), never a judge;
   so is the cost, at most ``max_passes`` denoising passes per volume, checked before a setting
   runs (a costlier one is skipped unrun, and TPE learns to avoid it). Every trial's volumes
   share seeds (``volume_seeds: common``), so settings are compared on the same noise.
4. **Finalists, choice and confirmation** (:mod:`.choice`). The study ranks settings on a few
   volumes each, where settings a few points apart trade places by noise. So the study's best
   feasible settings of at most ``max_passes`` passes per volume (:func:`.choice.finalists`,
   ``finalists`` of them) are measured again on ``finalist_volumes`` fresh volumes each (seeds
   the study never used), and :func:`.choice.choose` picks among those rows: of the ones whose
   vf stays within the constraint, the cheapest (seconds per volume) whose worst judge (the
   largest of the four errors: :func:`.choice.worst_error`) is within the margin of the best
   (``max(margin_points, margin_fraction · best)``). The worst judge, not the sum the study
   ranks by, because a default must hold every judge: a sum lets one large error (particles
   too small) hide behind small ones (``choose_by: structure_error`` keeps the sum). If it
   anchors with calibration, the calibration is measured again at that setting, in its own
   variant. The choice and the paper's default are then measured on fresh seeds again
   (:func:`.choice.confirm`), beside the data floor (the training images' own descriptors
   against the held-out ones), and the defaults, calibration, finalists and table are written
   into the bundle (config.json and card.md). Every row is kept in the study
   (:func:`.choice.kept_row`), so an interrupted tuning resumes past what it measured.
"""

from micro_doe.studies.tuning.options import TuneOptions, TuningError
from micro_doe.studies.tuning.tuner import tune

__all__ = ["TuneOptions", "TuningError", "tune"]
