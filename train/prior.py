"""Train the gated PixelCNN prior on the code grids of a trained VQ-VAE.

    python -m train.prior --vqvae runs/vqvae/model --data ../shared/oasis --out runs/prior --minutes 20

The splits are encoded once into RUN_DIR/codes_<split>.npz (reused on --resume). Validation
reports the negative log-likelihood in bits per code beside two baselines on the same split:
uniform (log2 K) and the entropy of the split's own code frequencies (unigram).
"""
from vqvae.trainers import PriorTraining, train_prior
from train.cli import train_from_command_line


def main(argv=None):
    return train_from_command_line(PriorTraining, train_prior, __doc__, argv)


if __name__ == "__main__":
    main()
