"""Data: hard examples and their labels become frozen, versioned YOLO datasets."""
