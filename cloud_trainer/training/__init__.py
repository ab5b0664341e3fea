"""Training: fine-tuning with ultralytics, locally or on SkyPilot spot GPUs, fully offline."""
