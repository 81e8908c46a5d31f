"""Transfer learning as a reproducible DVC pipeline.

Modules, in the order the pipeline uses them:
    params      the typed schema of params.yaml
    datasets    raw datasets (embedded, no network)
    scenario    domain alignment, splits and k-shot draws
    models      encoder with named blocks + linear head
    train       the one training loop
    strategies  scratch, finetune, features, structure, joint
    metrics     accuracy, macro-F1, per-class accuracy, confusion
    io          atomic, deterministic files; the stage entry-point wrapper
"""
