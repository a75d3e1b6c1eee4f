"""What train_distilbert.py and train_lstm_baseline.py share: the plumbing around their recipes, one concern a module."""
