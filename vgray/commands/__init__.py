"""One module per command: train, assign/embed, info, check, evaluate, sweep, report, export, synth."""
