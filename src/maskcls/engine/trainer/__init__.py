"""One fold's training: the trainer (model, data, loss, optimiser, schedule, epochs, checkpoints), the epoch loop,
and the hook points (``callbacks``) through which the extensions plug in. Nothing here imports an extension."""
