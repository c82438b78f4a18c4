"""What a Trainer run reports and writes, as callbacks: the step progress bar, the scores
report and wandb tables, the prediction writer."""
