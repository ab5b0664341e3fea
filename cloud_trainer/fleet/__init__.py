"""The fleet side of the control plane: device registry, rollout controller, their database."""
