"""Train the realistic decoder: a detail head on the frozen faithful decoder, against a
whole-slice discriminator (``vqvae/realistic.py``). The codes stay those of --init, so every
prior trained on them serves both decoders.

    python -m train.realistic --data ../shared/oasis --init assets/models/vqvae \\
        --out runs/realistic --minutes 60      # continue later with --resume

Writes RUN_DIR/metrics.jsonl, RUN_DIR/checkpoint.pt (head, discriminator and both optimisers)
and the final model in the Hugging Face layout under RUN_DIR/model (ship it as
assets/models/vqvae-realistic with train.push_to_hub --realistic).
"""
from vqvae.realistic import RealisticTraining, train_realistic
from train.cli import train_from_command_line


def main(argv=None):
    return train_from_command_line(RealisticTraining, train_realistic, __doc__, argv)


if __name__ == "__main__":
    main()
