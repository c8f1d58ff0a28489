"""Train the feature network of the generation metrics: a SliceCNN predicting slice position k.

    python -m train.position_net --data ../shared/oasis --out runs/position_net --minutes 5

Validation reports exact accuracy over the 32 positions and accuracy within one position
(neighbouring slices look alike). The model lands in RUN_DIR/model; the shipped copy is
assets/models/position_net, which ``train.evaluate_generation`` uses by default.
"""
from vqvae.trainers import PositionNetTraining, train_position_net
from train.cli import train_from_command_line


def main(argv=None):
    return train_from_command_line(PositionNetTraining, train_position_net, __doc__, argv)


if __name__ == "__main__":
    main()
