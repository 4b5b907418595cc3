"""The trainer gateway: one per trainer.  Caches rows and optimizer state ahead of use as the oracle's
plans say (sync mode) or reads and updates through the shards every step (direct mode), and sums
gradients with its peers exactly as synchronous data-parallel training would."""
