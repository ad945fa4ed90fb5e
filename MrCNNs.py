"""Mr-CNNs: the Mr-CNN with one stream whose weights are shared by all three scales.

Same input and output as MrCNN.MrCNN ([B, 3, 3, 42, 42] crops in [0, 1] -> [B] logits);
2,682,689 parameters.
"""
from MrCNN import MrCNN


class MrCNNs(MrCNN):
    """All three crops go through one shared Stream; the fusion layers are MrCNN's."""

    shared_stream = True
