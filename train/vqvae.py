"""Train the VQ-VAE on brain slices.

    python -m train.vqvae --data ../shared/oasis --out runs/vqvae --minutes 30

Fine-tuning only the decoder of a trained model (its encoder and codebook, so its codes and any
prior trained on them, stay exactly as they were), optionally with refinement blocks:

    python -m train.vqvae --data ../shared/oasis --out runs/decoder --init runs/vqvae/model \\
        --decoder-only --refine-blocks 2 --minutes 30

Writes RUN_DIR/metrics.jsonl, RUN_DIR/checkpoint.pt (resumable with --resume) and the final
model in the Hugging Face layout under RUN_DIR/model.
"""
from vqvae.trainers import VQVAETraining, train_vqvae
from train.cli import train_from_command_line


def main(argv=None):
    return train_from_command_line(VQVAETraining, train_vqvae, __doc__, argv)


if __name__ == "__main__":
    main()
