"""The model registry: every model main.py can train, by the name checkpoints record."""
from MrCNN import MrCNN
from MrCNNs import MrCNNs

MODELS = {"MrCNN": MrCNN, "MrCNNs": MrCNNs}


def build_model(name, **options):
    """'MrCNN' or 'MrCNNs' (options: dropout, batch_norm) -> a new model; ValueError otherwise."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    return MODELS[name](**options)
