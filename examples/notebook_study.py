"""A study from Python, as in a notebook: a mapping instead of study.yaml, an objective of your
own, everything in this process (no Ray), the study in memory and no MLflow.

It searches the shipped spheres model's sampling settings (harmonizing cycles n_h, steps S)
for volumes whose inclusions are as large as the training images' while staying quick.
For a real study drop ``executor="local"`` (Ray actors, GPUs when there are any), and give
``storage`` and ``tracking`` URLs so that it resumes and shows in optuna-dashboard and MLflow.
"""

import micro_doe as md


@md.objective(direction="minimize")
def diameter_gap(sample: md.Sample) -> float:
    """|mean inclusion diameter − the training images'| in voxels, over 2D sections."""
    return abs(sample.descriptors.sizes.diameter_mean - sample.reference.sizes.diameter_mean)


spec = {
    "name": "notebook-spheres",
    "generator": {"kind": "micro3diff", "model": "pretrained:spheres-32"},
    "search": {"n_h": {"int": [0, 1]}, "steps": {"int": [5, 10]}},
    "samples_per_trial": 1,
    "objectives": [{"name": "seconds_per_volume"}],  # replaced below by objectives=[...]
    "sampler": {"kind": "random", "seed": 0},
    "budget": {"n_trials": 3},
    "evaluation": {"phase": "inclusion", "tortuosity_axis": None},
    "storage": "memory",
    "tracking": None,
    "artifacts": "notebook-pictures",  # each trial's slice montage
}
study = md.Study(spec, objectives=[diameter_gap, "seconds_per_volume"], executor="local")
result = study.run()

for t in sorted(result.completed, key=lambda t: t.number):
    print(f"trial {t.number}: {t.params} → diameter gap {t.values[0]:.2f} voxels, {t.values[1]:.1f} s per volume")
print("Pareto front:", [t.number for t in result.best_trials])
