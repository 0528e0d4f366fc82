"""One LightningModule per task. Each is imported only by the experiments that use it."""
