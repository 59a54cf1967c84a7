"""Video input/output, masks, synthetic clips and the training data pipeline."""
