"""Label Studio in the loop: push hard examples with pre-labels, pull people's labels, and
measure how much people corrected the model (the label-quality signal)."""
