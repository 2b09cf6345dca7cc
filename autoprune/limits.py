"""Bounds on the work a number can ask for. A flag, a spec file, a recipe and a study's stored
spec (which anyone with access to a shared database can write) are held to the same ones."""

MAX_EPOCHS = 1000  # training, fine-tuning and trained-quantization epochs
MAX_BATCH = 65536  # batch sizes, latency batches
MAX_TRIALS = 100_000  # trials a study may ask for
MAX_RECONSTRUCT_IMAGES = 10_000  # images a least-squares refit after filter pruning runs on
RECONSTRUCT_IMAGES = 256  # the search's default: rows enough for layers of a few thousand inputs
