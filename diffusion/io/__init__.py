"""Saving and loading, one module per kind of file or folder.

- `files`: atomic writes, careful JSON reads, folder manifests (size and SHA-256 per file);
- `weights`: one network's ``config.json`` and ``model.safetensors``;
- `checkpoint`: a training run's ``OUT/checkpoints/step-N`` folders;
- `model_folder`: the model folder `DiffusionPipeline` saves and loads, the shipped models, Hub ids;
- `assets`: where the shipped models are (a wheel's package data, or a source checkout's ``assets/``);
- `diffusers_folder`: diffusers pipeline folders, read and exported.
"""
